"""Generator training throughput: this project's loop, with its issue-20 paths off and on,
against a plain baseline loop.

    python bench/train.py [--config configs/libreoffice_ende.yaml] [--steps 30] [--repeats 3]
        [--no-baseline] [--compile] [data.dir=...]

All train the same model (same initial weights) on the same examples (train sources
with their top BM25 memory, joint input) in this one process, on one CPU or GPU:
- ours: `selfmem.train.loop.fit` with token-budget batches of similar length
  (train.max_tokens), in each precision of --precisions (fp32 on CPUs by default: bf16
  matrix products are slow on CPUs without bf16 instructions);
- ours, old paths: the same, with the model's and the loss's paths as before issue 20
  (separate q/k/v products, logits for every target position, pads included, batches
  packed by summed lengths, PyTorch's matrix products instead of oneDNN's; see `old_paths`); the loop's device-side non-finite guard stays, since on a CPU a host sync
  costs nothing (operations run synchronously);
- ours, no oneDNN or ours, oneDNN (fp32 on a CPU): the new paths with the product path this
  CPU does not train with by default (`selfmem.models.linear`: oneDNN's where PyTorch's CPU
  kernels run AVX-512, PyTorch's own elsewhere), to tell the two apart;
- ours, compiled (with --compile): the new paths with train.compile (the layers through
  torch.compile, one graph per layer class, dynamic shapes, bucketed padded lengths);
- baseline: a plain loop, fixed-size batches in random order padded to the longest
  example, fp32, with the batch size that holds as many real tokens per step on average.
The process keeps freed CPU memory for reuse, as the launch scripts do
(`selfmem/common/cpu_memory.py`). Throughput counts real (non-pad) encoder and target tokens per second. Medians of
--repeats runs. The tokenizer and BM25 memory are prepared first in a temporary run
directory (or reused from --run-root).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.config import load_config  # noqa: E402
from selfmem.common.cpu_memory import keep_freed_memory  # noqa: E402
from selfmem.common.distributed import DistEnv  # noqa: E402
from selfmem.common.run import RunPaths  # noqa: E402
from selfmem.common.tokenizer import prepare_run_tokenizer  # noqa: E402
from selfmem.retrieve.memory import build_bm25_memory  # noqa: E402
from selfmem.models.linear import TRAINS_ON_ONEDNN, weight_packing  # noqa: E402
from selfmem.models import seq2seq  # noqa: E402
from selfmem.train.generator import GeneratorTask, prepare_generator  # noqa: E402
from selfmem.train.loop import fit, inverse_sqrt_schedule  # noqa: E402
from selfmem.train.prefetch import to_device  # noqa: E402

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


PEAK_TFLOPS = {"H100": 989, "H200": 989, "A100": 312, "V100": 125, "P100": 19}  # dense fp16/bf16 tensor cores


def training_flops_per_token(config, task, batches: list[list[int]]) -> float:
    """Model FLOPs (forward + backward = 3x forward, multiply-adds counted twice) per real token.

    Matrix products of the encoder layers over encoder tokens, of the decoder layers and the
    output projection over target tokens, the cross-attention keys/values over encoder
    tokens, and attention scores and mixes over the real lengths of each example.
    """
    g = config.generator
    d, ffn, vocab = g.d_model, g.ffn_dim, task.tokenizer.vocab_size
    forward = 0.0
    for batch in batches:
        for i in batch:
            source, target = task.train_sizes[i][0], task.train_sizes[i][1]
            forward += 2 * source * g.encoder_layers * (4 * d * d + 2 * d * ffn)
            forward += 2 * target * (g.decoder_layers * (6 * d * d + 2 * d * ffn) + d * vocab)
            forward += 2 * source * g.decoder_layers * 2 * d * d  # cross-attention keys and values
            forward += 4 * d * (g.encoder_layers * source**2 + g.decoder_layers * (target**2 / 2 + target * source))
    tokens = sum(task.num_tokens(b) for b in batches)
    return 3 * forward / tokens


@contextmanager
def old_paths():
    """The model's, the loss's and the batches' paths as they were before issue 20, for the
    side-by-side only (kept here, not in the package, where the new paths replaced them): q, k
    and v (k and v) as separate matrix products, fp32 logits for every target position, pads
    included, batches packed in the order of the examples' summed part lengths, and PyTorch's
    own matrix products (no oneDNN path, `selfmem.models.linear`). The separate products are
    joined by a copy, since the model now takes them side by side: a cost the old code did
    not have, a copy of the keys and values against their products."""
    def separate(x, *layers):
        outputs = [F.linear(x, layer.weight, layer.bias) for layer in layers]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

    def full_logits_loss(model, tensors, smoothing):
        logits = model(tensors["src"], tensors["decoder_input"], tensors.get("memory"))
        # the padded labels again: the real ones where they were, ignored elsewhere
        labels = torch.full((logits.shape[0] * logits.shape[1],), -100, device=logits.device)
        labels[tensors["target_rows"]] = tensors["labels"]
        return F.cross_entropy(logits.float().flatten(0, 1), labels, label_smoothing=smoothing, reduction="sum")

    with (mock.patch.object(seq2seq, "project", separate),
          mock.patch.object(GeneratorTask, "_loss", staticmethod(full_logits_loss)),
          mock.patch("selfmem.common.batching.packing_key", lambda size: (sum(size),)),
          weight_packing(False)):
        yield


def ours(config, model, task, initial: dict, steps: int, precision: str, new_paths: bool = True,
         compile: bool = False, onednn: bool | None = None) -> float:
    """Tokens/s of `fit` from the ``initial`` weights over the second half of ``steps`` steps
    (its own log's figure).

    The first half warms up (allocator, kernel selection for new shapes, and with
    ``compile`` the compilation, once per process); evaluation is outside the timed window.
    """
    config.train.precision = precision
    config.train.compile = compile
    config.train.max_steps = steps
    config.train.log_every = steps // 2
    config.train.save_every = 10**9
    model.load_state_dict(initial)
    # onednn: None, the CPU's default product path in training; True or False, oneDNN's or PyTorch's
    with (tempfile.TemporaryDirectory() as out, weight_packing(onednn is not False, training=onednn),
          (nullcontext() if new_paths else old_paths())):
        fit(model, task, config.train, ONE_PROCESS, Path(out), config.run.seed,
            inverse_sqrt_schedule(config.train.warmup_steps))
        records = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    timed = [r for r in records if "tokens_per_s" in r][-1]
    if compile:
        print(f"  compiled graphs so far (first compiles and recompiles): {timed['compiles']}", flush=True)
    return timed["tokens_per_s"]


@weight_packing(False)
def baseline(config, model, task, initial: dict, steps: int) -> float:
    """Tokens/s of a plain loop (second half of ``steps``): random fixed-size batches padded to
    the longest, fp32, PyTorch's own matrix products."""
    model.load_state_dict(initial)
    config.train.compile = False  # its batches padded to their longest, not to a bucket
    budget_batches = task.epoch_batches(0)
    batch_size = round(sum(len(b) for b in budget_batches) / len(budget_batches))
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)][:steps]
    device = ONE_PROCESS.device
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, betas=(0.9, 0.98))
    tokens, start = 0, time.perf_counter()
    for step, batch in enumerate(batches):
        if step == steps // 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            tokens, start = 0, time.perf_counter()
        loss = task.loss(model, to_device(task.collate(batch), device)) / task.num_targets(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += task.num_tokens(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/libreoffice_ende.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each loop (0: only --profile)")
    parser.add_argument("--run-root", help="reuse the tokenizer and BM25 memory prepared under this root")
    parser.add_argument("--precisions", default="fp32", help="autocast dtypes for our loop, e.g. fp32,fp16,bf16")
    parser.add_argument("--no-baseline", action="store_true", help="time only our loop, old paths and new")
    parser.add_argument("--compile", action="store_true",
                        help="also time our loop with train.compile (its first run compiles, minutes on a CPU)")
    parser.add_argument("--profile", metavar="PRECISION", help="also profile our loop's steps in this precision")
    parser.add_argument("--prepare-only", action="store_true",
                        help="prepare the tokenizer and BM25 memory under --run-root, then stop (for a GPU run)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_intermixed_args()
    if args.prepare_only and not args.run_root:
        parser.error("--prepare-only prepares under --run-root: name one, for the runs that reuse it")
    if args.steps < 2 or args.steps % 2:
        parser.error(f"--steps must be even and at least 2 (both loops time the second half), got {args.steps}")
    keep_freed_memory()  # as the launch scripts do, for every run of this process
    logging.getLogger("selfmem").setLevel(logging.WARNING)
    root = Path(args.run_root or tempfile.mkdtemp(prefix="bench-train-"))
    config = load_config(REPO / args.config, [f"run.root={root}", *args.overrides])
    config.generator.copy_epochs = 0  # both loops measure the retrieved-memory inputs
    if not Path(config.data.dir).is_absolute():
        config.data.dir = str((REPO / config.data.dir).resolve())
    paths = RunPaths(config.run_dir)
    if not (paths.tokenizer.exists() and paths.bm25_memory("dev").exists()):
        prepare_run_tokenizer(config, paths.tokenizer)
        build_bm25_memory(config, ONE_PROCESS, paths)
    if args.prepare_only:
        print(f"prepared: {paths.tokenizer} and the BM25 memory under {config.run_dir}")
        return

    device = ONE_PROCESS.device
    cpu = (f"CPU ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, training's products "
           f"{'oneDNN' if TRAINS_ON_ONEDNN else 'PyTorch'}'s by default")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else cpu}")
    print(f"config: {args.config} ({config.generator.memory} memory, d_model {config.generator.d_model}, "
          f"{config.generator.encoder_layers}+{config.generator.decoder_layers} layers), "
          f"max_tokens {config.train.max_tokens}, {args.steps} steps, median of {args.repeats}")
    # one model and task for every run (encoding the data is slow), each run from the same weights
    model, task = prepare_generator(config, ONE_PROCESS, paths)
    # the closing evaluation kept short: the first 8 dev examples, in a task of their own (a task
    # batches its dev set when it is built)
    task = GeneratorTask(config, ONE_PROCESS, task.ids, task.tokenizer, task.train, task.dev[:8],
                         task.dev_references[:8])
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    precisions = args.precisions.split(",")
    runs = {} if args.no_baseline else {"baseline fp32": lambda: baseline(config, model, task, initial, args.steps)}
    for p in precisions:
        runs[f"ours {p}, old paths"] = lambda p=p: ours(config, model, task, initial, args.steps, p, new_paths=False)
        runs[f"ours {p}"] = lambda p=p: ours(config, model, task, initial, args.steps, p)
        if device.type == "cpu" and p == "fp32":  # the product path this CPU does not train with
            other = "no oneDNN" if TRAINS_ON_ONEDNN else "oneDNN"
            runs[f"ours {p}, {other}"] = lambda p=p: ours(config, model, task, initial, args.steps, p,
                                                          onednn=not TRAINS_ON_ONEDNN)
        if args.compile:
            runs[f"ours {p}, compiled"] = lambda p=p: ours(config, model, task, initial, args.steps, p, compile=True)
    figures = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so that each repeat meets the machine's load alike
        for name, run in runs.items():
            figures[name].append(run())
            print(f"  run: {name} {figures[name][-1]:.0f} tokens/s", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as profiler:
            ours(config, model, task, initial, args.steps, args.profile)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60))
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    medians = {name: statistics.median(values) for name, values in figures.items() if values}  # none: --repeats 0
    flops_per_token = training_flops_per_token(config, task, task.epoch_batches(0)[: args.steps])
    peak = next((tflops for name, tflops in PEAK_TFLOPS.items() if device.type == "cuda"
                 and name in torch.cuda.get_device_name()), None)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters, {flops_per_token / 1e6:.1f} MFLOP per training token")
    for name, median in medians.items():
        versus = [f"{median / medians['baseline fp32']:.2f}x baseline"] if "baseline fp32" in medians else []
        old = medians.get(f"{name}, old paths")
        versus += [f"{median / old:.2f}x old paths"] if old else []
        eager = medians.get(name.removesuffix(", compiled")) if name.endswith(", compiled") else None
        versus += [f"{median / eager:.2f}x eager"] if eager else []
        mfu = [f"MFU {median * flops_per_token / (peak * 1e12):.1%} of {peak} TFLOP/s"] if peak else []
        print(f"{name:24s} {median:9.0f} tokens/s  ({'; '.join(versus + mfu + ['runs: ' + ', '.join(f'{v:.0f}' for v in figures[name])])})")


if __name__ == "__main__":
    main()
