"""How long `train.compile` takes to compile: the whole model compiled (`torch.compile` of the
training model, as the loop did before) against its layers compiled (`compiled_layers`, one
graph per layer class, as it does now), on the same batches, from cold caches, in this one
process, alternated.

    python bench/compile_time.py [--config configs/jrc_ende.yaml] [--repeats 3] [overrides...]

A native generator of --config's architecture with random weights runs forward and backward
(the generator's loss) over three batches of bucketed shapes (rows, source length, target
length), under the settings compiled steps run with (`compiled_steps`). Printed per way: the
seconds for the three batches, eager, compiled whole and compiled by layers (over eager's:
the compiling, plus whatever the compiled code's three batches take more or less; medians of
--repeats; inductor's caches off, and dynamo's reset before each run, so that every run
compiles from nothing), the graphs each compiled, and how far its losses are from eager's.
"""

from __future__ import annotations

import os

os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"  # every run compiles cold (read at import)

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.config import load_config  # noqa: E402
from selfmem.models import Seq2SeqModel  # noqa: E402
from selfmem.models.build import native_model_config  # noqa: E402
from selfmem.train.generator import GeneratorTask  # noqa: E402
from selfmem.train.loop import compiled_graphs, compiled_layers, compiled_steps  # noqa: E402

SHAPES = [(48, 32, 24), (64, 24, 16), (40, 48, 32)]  # (rows, source length, target length), bucketed lengths
IDS = SimpleNamespace(pad_id=0, bos_id=1, eos_id=2, sep_id=4)  # the tokenizer's special ids


def batches(vocab_size: int) -> list[dict[str, torch.Tensor]]:
    """Random inputs of SHAPES, each row's real lengths drawn below its padded width."""
    g = torch.Generator().manual_seed(0)
    out = []
    for rows, source_len, target_len in SHAPES:
        src = torch.randint(5, vocab_size, (rows, source_len), generator=g)
        src[torch.arange(source_len) >= torch.randint(4, source_len + 1, (rows, 1), generator=g)] = IDS.pad_id
        decoder_input = torch.randint(5, vocab_size, (rows, target_len), generator=g)
        decoder_input[:, 0] = IDS.bos_id
        real = torch.arange(target_len) < torch.randint(2, target_len + 1, (rows, 1), generator=g)
        target_rows = real.flatten().nonzero().squeeze(1)
        labels = torch.randint(5, vocab_size, (len(target_rows),), generator=g)
        out.append({"src": src, "decoder_input": decoder_input, "target_rows": target_rows, "labels": labels})
    return out


def run(model: Seq2SeqModel, inputs: list[dict[str, torch.Tensor]], way: str) -> tuple[float, int, list[float]]:
    """Seconds for forward and backward over ``inputs``, compiled ``way`` ("eager", "whole",
    "layers"), the graphs compiled and the losses."""
    torch._dynamo.reset()
    before, losses = compiled_graphs(), []
    start = time.perf_counter()
    with compiled_steps(way != "eager"), compiled_layers(model, way == "layers"):
        train_model = torch.compile(model, dynamic=True) if way == "whole" else model
        for tensors in inputs:
            loss = GeneratorTask._loss(train_model, tensors, 0.1)
            loss.backward()
            losses.append(loss.item())
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, compiled_graphs() - before, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/jrc_ende.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. generator.encoder_layers=3")
    args = parser.parse_args()
    config = load_config(REPO / args.config, args.overrides)
    if config.generator.memory == "dual":
        parser.error("the batches hold no separate memories: use a config with generator.memory none or joint")
    config.generator.dropout = 0.0  # the same losses whichever way
    torch.manual_seed(0)
    model = Seq2SeqModel(native_model_config(config.generator, SimpleNamespace(
        vocab_size=config.tokenizer.vocab_size, **vars(IDS)))).train()
    inputs = batches(config.tokenizer.vocab_size)
    g = config.generator
    print(f"{args.config}: {g.encoder_layers}+{g.decoder_layers} layers, d_model {g.d_model}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {torch.get_num_threads()} threads, "
          f"batches {SHAPES}, medians of {args.repeats}")
    ways = ["eager", "whole", "layers"]
    seconds, graphs, losses = {w: [] for w in ways}, {}, {}
    for repeat in range(args.repeats):
        for way in ways if repeat % 2 == 0 else ["eager", "layers", "whole"]:  # alternated against the load
            took, graphs[way], losses[way] = run(model, inputs, way)
            seconds[way].append(took)
            print(f"  run: {way} {took:.1f} s", flush=True)
    eager = statistics.median(seconds["eager"])
    for way in ways:
        median = statistics.median(seconds[way])
        differ = max(abs(a - b) / abs(b) for a, b in zip(losses[way], losses["eager"]))
        compiled = (f", {median - eager:.1f} s over eager (compiling, and running the 3 batches compiled), "
                    f"{graphs[way]} graphs, losses at most {differ:.1e} from eager's (relative)"
                    if way != "eager" else "")
        print(f"{way:7s} {median:7.1f} s{compiled}  (runs: {', '.join(f'{s:.1f}' for s in seconds[way])})")
    print(f"compiling by layers takes {(statistics.median(seconds['whole']) - eager) / max(statistics.median(seconds['layers']) - eager, 1e-9):.2f}x less than the whole model's")


if __name__ == "__main__":
    main()
