"""Minimum Bayes risk selection speed: ours against sacrebleu's sentence scores pair by pair.

    python bench/mbr.py [--examples 1000] [--candidates 50] [--hits 5] [--hits-weight 8]
                        [--baseline-examples 10] [--repeats 3] [--utility bleu chrf]

Beam-like candidates, seeded: each example takes a dev sentence of the demo corpus
(LibreOffice help, German) and makes --candidates variants of it, each with 0-3 of its words
replaced by other words of the corpus or dropped, and --hits "retrieved" variants of it (2-5
words changed) sharing --hits-weight, as the default selector reads the top BM25 hits (0:
none). Ours (``selfmem.select.mbr.mbr_scores``, the candidates weighted by made-up generator
scores at temperature 1) scores every example; the baseline, the same expected utility from
sacrebleu's ``sentence_score`` of every (candidate, pseudo-reference) pair, scores the first
--baseline-examples examples (a second or more per example at 50 candidates), where both
are timed on the same examples, alternated --repeats times, and their scores compared.
Printed per utility: ours on all examples (median of --repeats, in one process: the
selection stage divides the examples over its ranks), each one's median seconds per example
on the shared examples, the ratio of those medians, and the largest score difference.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.select.mbr import mbr_scores  # noqa: E402


def beam_like(examples: int, candidates: int, hits: int,
              seed: int = 0) -> list[tuple[list[str], list[float], list[str]]]:
    """Each example's candidates (variants of one demo dev sentence), generator scores and
    retrieved texts (further variants)."""
    sentences = [json.loads(line)["trg"] for line in (REPO / "data" / "demo" / "dev.jsonl").read_text().splitlines()]
    words = [w for s in sentences for w in s.split()]
    rng = random.Random(seed)
    def variant(base: list[str], changes: int) -> str:
        words_left = list(base)
        for _ in range(changes):
            if words_left and rng.random() < 0.3:
                del words_left[rng.randrange(len(words_left))]
            elif words_left:
                words_left[rng.randrange(len(words_left))] = rng.choice(words)
        return " ".join(words_left)

    out = []
    for _ in range(examples):
        base = rng.choice(sentences).split()
        pool = [variant(base, rng.randint(0, 3)) for _ in range(candidates)]
        retrieved = [variant(base, rng.randint(2, 5)) for _ in range(hits)]
        out.append((pool, sorted((-rng.expovariate(2.0) for _ in pool), reverse=True), retrieved))
    return out


def sacrebleu_mbr(pool: list[str], scores: list[float], hits: list[str], weight: float, utility: str) -> list[float]:
    """The expected utility pair by pair with sacrebleu (distinct texts, best score each; the
    hits sharing ``weight`` beside them)."""
    from sacrebleu.metrics import BLEU, CHRF

    metric = BLEU(tokenize="13a", effective_order=True) if utility == "bleu" else CHRF(word_order=2)
    best: dict[str, float] = {}
    for text, score in zip(pool, scores):
        best[text] = max(score, best.get(text, -math.inf))
    top = max(best.values())
    weights = {t: math.exp(s - top) for t, s in best.items()}
    total = sum(weights.values())
    consensus = [sum(w / total * metric.sentence_score(c, [r]).score for r, w in weights.items()) for c in pool]
    hits = [h for h in hits if h]  # as ours: an empty text is no pseudo-reference
    if not hits or weight == 0:
        return consensus
    return [(u + weight * sum(metric.sentence_score(c, [h]).score for h in hits) / len(hits)) / (1 + weight)
            for c, u in zip(pool, consensus)]


def timed(work) -> tuple[float, object]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--hits", type=int, default=5)
    parser.add_argument("--hits-weight", type=float, default=8.0)
    parser.add_argument("--baseline-examples", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--utility", nargs="+", default=["bleu", "chrf"], choices=["bleu", "chrf"])
    args = parser.parse_args()
    data = beam_like(args.examples, args.candidates, args.hits)
    shared = data[:args.baseline_examples]
    w = args.hits_weight
    print(f"{args.examples} examples x {args.candidates} candidates, {args.hits} retrieved texts weighing {w:g}; "
          f"baseline on the first {len(shared)}")

    def ours_on(examples, utility):
        return [mbr_scores(p, s, utility, 1.0, anchors=h, anchor_weight=w) for p, s, h in examples]

    for utility in args.utility:
        runs = [timed(lambda: ours_on(data, utility))[0] for _ in range(args.repeats)]
        ours_runs, base_runs = [], []
        for _ in range(args.repeats):  # alternated, each side's median: one timing of a few examples is noise
            ours_shared, ours = timed(lambda: ours_on(shared, utility))
            base_shared, base = timed(lambda: [sacrebleu_mbr(p, s, h, w, utility) for p, s, h in shared])
            ours_runs.append(ours_shared)
            base_runs.append(base_shared)
        ours_shared, base_shared = statistics.median(ours_runs), statistics.median(base_runs)
        diff = max(abs(a - b) for x, y in zip(ours, base) for a, b in zip(x, y))
        print(f"  {utility}: ours {statistics.median(runs):.2f} s for all {args.examples} (runs: "
              f"{', '.join(f'{r:.2f}' for r in runs)}); on the shared {len(shared)}, medians of {args.repeats}: "
              f"ours {1000 * ours_shared / len(shared):.1f} ms/example, sacrebleu pair by pair "
              f"{1000 * base_shared / len(shared):.0f} ms/example, {base_shared / ours_shared:.0f}x; "
              f"largest score difference {diff:.1e}")


if __name__ == "__main__":
    main()
