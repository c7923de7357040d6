"""A candidates file scored against the references, and the picks a selector is measured
against: the beam top-1 and the oracle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfmem.common.config import Config
from selfmem.common.data import Example
from selfmem.common.io import read_jsonl
from selfmem.common.metrics import sentence_bleu, sentence_rouge


@dataclass(frozen=True)
class SelectorExample:
    """One source with its candidates and their sentence metrics."""

    source: str
    candidates: list[str]
    metric: list[float]


def baseline_picks(examples: list[SelectorExample]) -> dict[str, list[str]]:
    """What the selector's pick is measured against: each example's first candidate (the
    beam top-1) and its best one by the metric against the reference (the oracle)."""
    return {"top1": [ex.candidates[0] for ex in examples],
            "oracle": [ex.candidates[max(range(len(ex.metric)), key=ex.metric.__getitem__)] for ex in examples]}


def sentence_metric(config: Config) -> Callable[[str, str], float]:
    """The per-candidate metric: sentence BLEU (translation) or weighted ROUGE-1 + ROUGE-2."""
    if config.data.metric == "bleu":
        return lambda hyp, ref: sentence_bleu(hyp, ref, config.data.bleu_tokenize)
    weights = tuple(config.selector.rouge_weights)
    return lambda hyp, ref: sentence_rouge(hyp, ref, weights)


def selector_examples(candidates_path: Path, examples: list[Example],
                      metric: Callable[[str, str], float]) -> list[SelectorExample]:
    """Each example's candidates (over all of its memory inputs) with their metric against its target."""
    records = read_jsonl(candidates_path)
    if len(records) != len(examples):
        raise ValueError(f"{candidates_path}: {len(records)} lines for {len(examples)} examples")
    out = []
    for record, example in zip(records, examples):
        pool = [c for per_input in record["candidates"] for c in per_input]
        out.append(SelectorExample(example.source, pool, [metric(c, example.target) for c in pool]))
    return out
