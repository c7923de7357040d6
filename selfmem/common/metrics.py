"""Evaluation metrics on a 0-100 scale: corpus scores to report, sentence scores for the selector.

Corpus scores carry a signature that records how they were computed, so a number in a
results table can be reproduced. Sentence scores are the per-candidate targets of the
memory selector and are called for every candidate of every example, so their metric
objects are built once per option set and reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version

from sacrebleu.metrics import BLEU, CHRF, TER

ROUGE_KEYS = ("rouge1", "rouge2", "rougeLsum")
METRICS = ("bleu", "rouge")


@dataclass(frozen=True)
class Score:
    """One corpus score and the signature that says how it was computed."""

    name: str
    value: float
    signature: str


def _check_pair(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(
            "hypotheses and references differ in length: "
            f"{len(hyps)} hypotheses, {len(refs)} references"
        )
    if not hyps:
        raise ValueError("cannot score an empty corpus: 0 hypotheses, 0 references")


def _sacrebleu_score(
    name: str, metric: BLEU | CHRF | TER, hyps: Sequence[str], refs: Sequence[str]
) -> Score:
    _check_pair(hyps, refs)
    value = metric.corpus_score(list(hyps), [list(refs)]).score
    # sacrebleu only knows the reference count (part of the signature) after scoring.
    return Score(name, value, str(metric.get_signature()))


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> Score:
    """Corpus BLEU (sacrebleu) with one reference per hypothesis."""
    return _sacrebleu_score("bleu", BLEU(tokenize=tokenize), hyps, refs)


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str]) -> Score:
    """Corpus chrF++ (sacrebleu chrF with word n-grams up to 2)."""
    return _sacrebleu_score("chrf", CHRF(word_order=2), hyps, refs)


def corpus_ter(hyps: Sequence[str], refs: Sequence[str]) -> Score:
    """Corpus TER (sacrebleu); lower is better."""
    return _sacrebleu_score("ter", TER(), hyps, refs)


@lru_cache(maxsize=None)
def _rouge_scorer(keys: tuple[str, ...]):
    # rouge-score imports nltk and scipy, a second of every launch's start; BLEU runs never need it
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(keys), use_stemmer=True)


@lru_cache(maxsize=None)
def _sentence_bleu_metric(tokenize: str) -> BLEU:
    # effective_order keeps short sentences with no 4-gram match from scoring 0,
    # as sacrebleu.sentence_bleu does.
    return BLEU(tokenize=tokenize, effective_order=True)


def _rouge_signature() -> str:
    return f"rouge-score:{version('rouge-score')}|stem:yes|lsum:newline"


def corpus_rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Score]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-Lsum F1 over examples (rouge-score, Porter stemming).

    ROUGE-Lsum treats each newline-separated line as a sentence, so multi-sentence
    summaries must be newline-joined to be scored sentence by sentence.
    """
    _check_pair(hyps, refs)
    scorer = _rouge_scorer(ROUGE_KEYS)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for hyp, ref in zip(hyps, refs):
        # rouge-score's argument order is (target, prediction).
        scores = scorer.score(ref, hyp)
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    signature = _rouge_signature()
    return {key: Score(key, 100.0 * total / len(hyps), signature) for key, total in totals.items()}


def sentence_bleu(hyp: str, ref: str, tokenize: str = "13a") -> float:
    """Sentence BLEU as sacrebleu.sentence_bleu computes it (exp smoothing, effective order)."""
    return _sentence_bleu_metric(tokenize).sentence_score(hyp, [ref]).score


def sentence_rouge(hyp: str, ref: str, weights: tuple[float, float] = (0.5, 0.5)) -> float:
    """Weighted sum of ROUGE-1 and ROUGE-2 F1 of one hypothesis, times 100."""
    scores = _rouge_scorer(("rouge1", "rouge2")).score(ref, hyp)
    return 100.0 * (weights[0] * scores["rouge1"].fmeasure + weights[1] * scores["rouge2"].fmeasure)


def evaluate(
    metric: str, hyps: Sequence[str], refs: Sequence[str], bleu_tokenize: str = "13a"
) -> dict[str, Score]:
    """Score a corpus with the metric family of a task: "bleu" (BLEU, chrF++, TER) or "rouge"."""
    if metric == "bleu":
        return {
            "bleu": corpus_bleu(hyps, refs, tokenize=bleu_tokenize),
            "chrf": corpus_chrf(hyps, refs),
            "ter": corpus_ter(hyps, refs),
        }
    if metric == "rouge":
        return corpus_rouge(hyps, refs)
    raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")


def headline(metric: str, scores: dict[str, Score]) -> float:
    """The single number that steers model selection for a metric family."""
    if metric == "bleu":
        return scores["bleu"].value
    if metric == "rouge":
        # One number that moves with all three ROUGE variants, as BRIO selects models,
        # so a checkpoint cannot win on ROUGE-1 alone while losing on bigrams or structure.
        return sum(scores[key].value for key in ROUGE_KEYS) / len(ROUGE_KEYS)
    raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")


def headline_score(metric: str, hyps: Sequence[str], refs: Sequence[str], bleu_tokenize: str = "13a") -> float:
    """``headline`` without the rest of ``evaluate``: TER alone takes tens of seconds on a
    thousand long segments, so quick checks skip chrF++ and TER."""
    if metric == "bleu":
        return corpus_bleu(hyps, refs, tokenize=bleu_tokenize).value
    return headline(metric, evaluate(metric, hyps, refs))
