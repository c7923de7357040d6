"""Beam search speed: the native beam search against Hugging Face ``generate``.

    python bench/beam.py --model DIR --tokenizer DIR --data FILE [--examples 200] [--repeats 3]

``--model`` is a local HF Marian/BART/mBART/Pegasus checkpoint; the native model is
imported from it, so both decode the same weights. Both decode the same inputs (the
first --examples sources of --data, sorted by length into batches of --batch) with the
same rules (``early_stopping`` True, length penalty 1.0, no n-gram blocking), in this one
process, for (5 beams, 1 returned) and (50 beams, 50 returned). Printed: examples per
second (median of --repeats), the ratio, the peak memory of each (CUDA: allocated bytes;
CPU: growth of the resident set during decoding, sampled every 2 ms) and the share of
examples whose best hypothesis is the same. `bench/marian_init.py` makes the Marian model
the README's figures come from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.tokenizer import load_tokenizer  # noqa: E402
from selfmem.infer.beam import BeamSettings, beam_search  # noqa: E402
from selfmem.infer.hf_beam import hf_beam_search  # noqa: E402
from selfmem.models.hf_import import import_hf  # noqa: E402


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory used inside the ``with`` block, above what was in use when it began."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start, self.running = resident_bytes(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, resident_bytes() - self.start)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()


def batches(sources: list[list[int]], size: int, pad: int, device) -> list[torch.Tensor]:
    """Length-sorted batches of ``size`` sources, right-padded."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out = []
    for start in range(0, len(order), size):
        rows = [sources[i] for i in order[start:start + size]]
        width = max(map(len, rows))
        out.append(torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a local HF seq2seq checkpoint directory")
    parser.add_argument("--tokenizer", required=True, type=Path, help="the run's tokenizer directory")
    parser.add_argument("--data", required=True, type=Path, help="a JSON-lines file of examples")
    parser.add_argument("--field", default="src")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16, help="examples per batch (beams x this rows)")
    parser.add_argument("--max-len", type=int, default=128, help="max generated tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default="5:1,50:50", help="beams:returned pairs")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    from transformers import AutoModelForSeq2SeqLM

    hf = AutoModelForSeq2SeqLM.from_pretrained(str(args.model), local_files_only=True).to(device, dtype).eval()
    native = import_hf(args.model, memory="none").to(device, dtype).eval()
    config = hf.config
    ids = dict(start_id=config.decoder_start_token_id, eos_id=config.eos_token_id)
    tokenizer = load_tokenizer(args.tokenizer)
    lines = args.data.read_text(encoding="utf-8").splitlines()[: args.examples]
    sources = [tokenizer.encode(json.loads(line)[args.field])[:255] + [config.eos_token_id] for line in lines]
    print(f"{native.num_parameters() / 1e6:.1f}M parameters, {len(sources)} examples, {device} "
          f"({torch.get_num_threads()} threads), {args.dtype}, batches of {args.batch}")

    engines = {
        "selfmem": lambda src, s: beam_search(native, src, None, s, **ids),
        "hf generate": lambda src, s: hf_beam_search(hf, src, s, pad_id=config.pad_token_id, **ids),
    }
    for beams, returned in (map(int, pair.split(":")) for pair in args.settings.split(",")):
        settings = BeamSettings(num_beams=beams, num_return=returned, max_len=args.max_len, early_stopping=True)
        inputs = batches(sources, args.batch, config.pad_token_id, device)
        speed: dict[str, list[float]] = {name: [] for name in engines}
        peak: dict[str, int] = {}
        best: dict[str, list[list[int]]] = {}
        for repeat in range(args.repeats):
            for name, decode in engines.items():
                with PeakMemory(device) as memory:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    outputs = [hyps[0].tokens for src in inputs for hyps in decode(src, settings)]
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    speed[name].append(len(sources) / (time.perf_counter() - started))
                peak[name] = max(peak.get(name, 0), memory.peak)
                best[name] = outputs
        same = sum(a == b for a, b in zip(best["selfmem"], best["hf generate"])) / len(sources)
        print(f"\nbeams {beams}, returned {returned}: same best hypothesis on {same:.1%} of examples")
        for name in engines:
            runs = ", ".join(f"{x:.1f}" for x in speed[name])
            print(f"  {name:12s} {statistics.median(speed[name]):8.1f} examples/s (runs: {runs}), "
                  f"peak memory {peak[name] / 2**20:.0f} MiB")
        ratio = statistics.median(speed["selfmem"]) / statistics.median(speed["hf generate"])
        print(f"  ratio selfmem / hf generate: {ratio:.2f}x")


if __name__ == "__main__":
    main()
