"""A beam-search step's selection: each example's 2 x beams best continuations over its beams.

    python bench/beam_selection.py [--examples 16] [--beams 5] [--vocab 8000 32000 50265] [--repeats 7]

Before: the beams' running scores added to every token's log-probability, then one top-k
over each example's beams x vocabulary scores (Hugging Face ``generate``'s way). Now
(``selfmem.infer.beam.best_continuations``, on a CPU when the vocabulary holds at least
4 x 2 x beams blocks of 64 tokens): each beam's best tokens first, found among the blocks
with the best maxima, then a top-k over those few. Both take the same random
log-probabilities; printed per vocabulary size: microseconds a step (median of --repeats
timings of 200 steps each, the two alternated) and the ratio, after checking that both
select the same scores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selfmem.common.cpu_memory import keep_freed_memory  # noqa: E402
from selfmem.infer.beam import best_continuations  # noqa: E402


def flat_selection(log_probs: torch.Tensor, running: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    return best_continuations(log_probs, running, k, block=log_probs.size(1) + 1)  # one block: the top-k over all


def microseconds(select, *args, steps: int = 200) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        select(*args)
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--beams", type=int, default=5)
    parser.add_argument("--vocab", type=int, nargs="+", default=[8000, 32000, 50265])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    k = 2 * args.beams
    print(f"{args.examples} examples x {args.beams} beams, top {k}, {torch.get_num_threads()} threads")
    for vocab in args.vocab:
        log_probs = torch.log_softmax(torch.randn(args.examples * args.beams, vocab) * 3, dim=-1)
        running = torch.randn(args.examples, args.beams)
        inputs = (log_probs, running, k)
        assert torch.equal(flat_selection(*inputs)[0], best_continuations(*inputs)[0]), "different scores selected"
        for select in (flat_selection, best_continuations):
            microseconds(select, *inputs, steps=10)  # warm up
        before, now = [], []
        for _ in range(args.repeats):
            before.append(microseconds(flat_selection, *inputs))
            now.append(microseconds(best_continuations, *inputs))
        b, n = statistics.median(before), statistics.median(now)
        print(f"vocab {vocab:6d}: before {b:7.0f} us a step, now {n:6.0f} us, {b / n:.2f}x")


if __name__ == "__main__":
    main()
