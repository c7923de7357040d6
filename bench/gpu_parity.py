"""The native model on a GPU against the same model on the CPU, for a GPU session: one padded
batch (random token ids, rows of random lengths), the teacher-forced logits and the gradients
of their cross-entropy, dropout off, on the CPU in fp32 and on the GPU in fp32 with TF32
products off and on, and under bf16 autocast. A GPU-only defect (a mask read another way by
one attention kernel, a path that only CUDA takes) shows as a difference far above the
precision's rounding (relative L2 differences of the logits, of the whole gradient and of
its worst parameter): fp32 without TF32 should agree to about 1e-5; bf16 autocast, set
against fp32 on a CPU, differs by 3e-3 (logits) and 1e-2 (gradient), where the source's
padding attended as if it were text gives 6e-2 and 9e-2. Last, 5-beam search with the
model on both: the share of inputs with the same best hypothesis (all, but for near-ties), and
the GPU search's host synchronisations on the steps between its reads of the search state
(torch.cuda's sync debug mode; there should be none). Added 2026-12-04,
when the H200's generators came out weaker than the CPU's at the same steps (docs/results.md).

    python bench/gpu_parity.py [--memory joint] [--rows 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selfmem.common.entry import use_tf32  # noqa: E402
from selfmem.infer.beam import HOST_READ_EVERY, BeamSettings, beam_search  # noqa: E402
from selfmem.models.config import ModelConfig  # noqa: E402
from selfmem.models.seq2seq import Seq2SeqModel  # noqa: E402

PAD, START = 0, 1


def padded(rows: int, longest: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids (rows, longest), each row a random length of real tokens, then padding."""
    ids = torch.randint(5, vocab, (rows, longest), generator=generator)
    lengths = torch.randint(3, longest + 1, (rows,), generator=generator)
    return ids.masked_fill(torch.arange(longest) >= lengths[:, None], PAD)


def random_batch(rows: int, source_len: int, target_len: int, vocab: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A padded teacher-forcing batch of random tokens: sources, labels and decoder inputs."""
    labels = padded(rows, target_len, vocab, generator)
    return {"src": padded(rows, source_len, vocab, generator), "labels": labels,
            "decoder_input": torch.cat([torch.full((rows, 1), START), labels[:, :-1]], dim=1)}


def logits_and_grads(model: Seq2SeqModel, batch: dict[str, torch.Tensor], device: torch.device,
                     autocast: torch.dtype | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits and every parameter's gradient of the batch's token cross-entropy, copied to
    the CPU (copies: a CPU gradient is otherwise the parameter's own ``.grad``, which moving the
    model to the GPU moves too)."""
    model.zero_grad(set_to_none=True)
    on = {name: tensor.to(device) for name, tensor in batch.items()}
    context = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    with context:
        logits = model(on["src"], on["decoder_input"], on.get("memory"))
    loss = F.cross_entropy(logits.float().flatten(0, 1), on["labels"].flatten(), ignore_index=PAD)
    loss.backward()
    cpu = torch.device("cpu")
    return logits.detach().to(cpu, torch.float32, copy=True), {
        name: p.grad.to(cpu, torch.float32, copy=True) for name, p in model.named_parameters() if p.grad is not None}


def relative(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """The L2 norm of the difference relative to the reference's (at least ``floor``)."""
    return float((a - b).norm() / max(float(b.norm()), floor, 1e-30))


def gradient_differences(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> tuple[float, str, float]:
    """The whole gradient's relative difference, and the parameter whose own gradient differs
    most, relative to its norm, or to a thousandth of the largest parameter's where its own is
    smaller (a key projection's bias has a gradient of zero but for rounding)."""
    whole = relative(torch.cat([grads[n].flatten() for n in reference]),
                     torch.cat([reference[n].flatten() for n in reference]))
    floor = 1e-3 * max(float(g.norm()) for g in reference.values())
    worst = max(reference, key=lambda n: relative(grads[n], reference[n], floor))
    return whole, worst, relative(grads[worst], reference[worst], floor)


def beam_agreement(model: Seq2SeqModel, src: torch.Tensor, memory: torch.Tensor | None) -> tuple[float, float]:
    """5-beam search with ``model`` on the CPU and on the GPU: the share of inputs whose best
    hypotheses are the same tokens, and the largest difference of their scores."""
    settings = BeamSettings(num_beams=5, num_return=1, max_len=24)
    eos = model.config.eos_id
    cpu = beam_search(model.cpu(), src, memory, settings, START, eos)
    gpu = beam_search(model.cuda(), src.cuda(), None if memory is None else memory.cuda(), settings, START, eos)
    same = sum(a[0].tokens == b[0].tokens for a, b in zip(cpu, gpu)) / len(cpu)
    return same, max(abs(a[0].score - b[0].score) for a, b in zip(cpu, gpu))


def syncs_after_steps(marks: list[int], syncs: int) -> list[int]:
    """The host synchronisations of each decoding step (its decoder call and the bookkeeping
    after it), from ``marks`` (the count of syncs seen when each step began) and ``syncs``
    (the count at the end)."""
    return [end - start for start, end in zip(marks, marks[1:] + [syncs])]


def syncs_between_reads(model: Seq2SeqModel, src: torch.Tensor, memory: torch.Tensor | None) -> tuple[int, int]:
    """The GPU search's host synchronisations on the steps after which the host does not read
    the search state (every ``HOST_READ_EVERY``-th step and the last do), and on those it does."""
    settings = BeamSettings(num_beams=5, num_return=1, max_len=24)
    marks, decode_step = [], model.decode_step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.decode_step = lambda *args: marks.append(len(caught)) or decode_step(*args)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            beam_search(model, src.cuda(), None if memory is None else memory.cuda(), settings, START,
                        model.config.eos_id)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            del model.decode_step
    after = syncs_after_steps(marks, len(caught))
    read = [n % HOST_READ_EVERY == 0 or n == len(after) for n in range(1, len(after) + 1)]
    return sum(c for c, r in zip(after, read) if not r), sum(c for c, r in zip(after, read) if r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", choices=["none", "joint", "dual"], default="none")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: this check sets a GPU against the CPU")
    torch.manual_seed(args.seed)
    # configs/libreoffice_ende.yaml's architecture, dropout off so that both sides compute alike
    config = ModelConfig(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, heads=4, ffn_dim=1024,
                         dropout=0.0, memory=args.memory, pad_id=PAD, decoder_start_id=START)
    model = Seq2SeqModel(config).train()
    generator = torch.Generator().manual_seed(args.seed)
    batch = random_batch(args.rows, 64, 48, config.vocab_size, generator)
    if args.memory == "dual":
        batch["memory"] = padded(args.rows * 2, 64, config.vocab_size, generator).view(args.rows, 2, 64)
    cpu_logits, cpu_grads = logits_and_grads(model, batch, torch.device("cpu"), None)
    model.cuda()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, memory {args.memory}, {args.rows} rows")
    for name, tf32, autocast in (("fp32", False, None), ("fp32, TF32 products", True, None),
                                 ("bf16 autocast", True, torch.bfloat16)):
        use_tf32(tf32)
        logits, grads = logits_and_grads(model, batch, torch.device("cuda"), autocast)
        missing = sorted(set(cpu_grads) - set(grads))
        if missing:
            raise SystemExit(f"error: no gradient on the GPU for {missing}")
        whole, worst, worst_difference = gradient_differences(grads, cpu_grads)
        print(f"{name:20s} logits {relative(logits, cpu_logits):.1e}   gradient {whole:.1e}, "
              f"its worst parameter {worst_difference:.1e} ({worst})")
    # decoding: the incremental decoder, its caches and the beams' shared cross-attention, with
    # weights that give sharp distributions (few near-ties for rounding to break otherwise)
    use_tf32(False)
    torch.manual_seed(args.seed)
    sharp = Seq2SeqModel(dataclasses.replace(config, init_std=0.5)).eval()
    same, score = beam_agreement(sharp, batch["src"], batch.get("memory"))
    print(f"5-beam search, fp32: the same best hypothesis for {same:.0%} of the inputs, scores within {score:.1e}")
    between, at_reads = syncs_between_reads(sharp, batch["src"], batch.get("memory"))
    print(f"5-beam search on the GPU: {between} host syncs on the steps between reads (should be 0), "
          f"{at_reads} on the read steps")


if __name__ == "__main__":
    main()
