"""Candidates files as a selector reads them: each line checked and joined with what is read
beside it (samples, the retrieved memory, the generator's and the no-memory baseline's
scores), MBR's scores and a trained S's features of a line's candidates, and the candidates
scored against the references for S's training and the picks it is measured against (the
beam top-1 and the oracle)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from selfmem.common.config import Config, SelectorConfig
from selfmem.common.data import Example
from selfmem.common.records import DataError, describe, iter_aligned, numbers_shaped_like, text_lists
from selfmem.common.metrics import sentence_bleu, sentence_rouge
from selfmem.select.mbr import mbr_score_sets
from selfmem.select.no_memory import parse_no_memory_scores


@dataclass(frozen=True)
class SelectorExample:
    """One source with its candidates, their sentence metrics and the values of the
    selector's features for each (``selector.features``; None without)."""

    source: str
    candidates: list[str]
    metric: list[float]
    features: list[list[float]] | None = None


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


@dataclass(frozen=True)
class CandidateLine:
    """One line of a candidates file: its ``FILE:LINE``, the line, its candidates over all of
    its memory inputs (never none) and their generator scores (None where the line has no
    ``"scores"``); with a samples file, the example's samples over all of its memory inputs
    (MBR's pseudo-references); with the retrieved memory read, its texts (MBR's anchors); with
    a no-memory scores file, the baseline's score of each candidate (``select/no_memory.py``)."""

    where: str
    record: dict
    pool: list[str]
    pool_scores: list[float] | None
    samples: list[str] | None = None
    retrieved: list[str] | None = None
    no_memory_scores: list[float] | None = None


def parse_generator_scores(where: str, record: dict,
                           candidates: list[list[str]]) -> list[float] | None:
    """The line's ``"scores"`` flattened like its candidates, checked to match them; None if absent."""
    if "scores" not in record:
        return None
    scores = record["scores"]
    if not numbers_shaped_like(scores, candidates):
        raise DataError(f"{where}: \"scores\" must be a list of lists of numbers shaped like \"candidates\" "
                        f"(one generator score per candidate), got {describe(scores)}")
    return [float(x) for s in scores for x in s]


def require_generator_scores(line: CandidateLine, wanted_by: str) -> list[float]:
    """The line's generator scores, or an error naming what needs them."""
    if line.pool_scores is None:
        raise DataError(f"{line.where}: no \"scores\" (the generator's score of each candidate), which "
                        f"{wanted_by} needs: decode the candidates with launch/generate.py --mode candidates")
    return line.pool_scores


def iter_candidates(path: Path, num_examples: int, split: str, samples_path: Path | None = None,
                    retrieved: Iterator[list[str]] | None = None,
                    no_memory_path: Path | None = None) -> Iterator[CandidateLine]:
    """The lines of a candidates file (one per example of ``split``) one at a time, each with
    candidates: a line without any is refused (decoding returns at least one per memory input).
    With ``samples_path``, each line's samples too, decoded from the same memory inputs; with
    ``retrieved`` (``iter_retrieved``), each line's retrieved memory, the next of it; with
    ``no_memory_path``, the no-memory baseline's score of each candidate."""
    samples = iter_aligned(samples_path, num_examples, split) if samples_path is not None else None
    opinions = iter_aligned(no_memory_path, num_examples, split) if no_memory_path is not None else None
    for where, record in iter_aligned(path, num_examples, split):
        candidates = text_lists(where, record, "candidates")
        pool = [c for per_input in candidates for c in per_input]
        if not pool:
            raise DataError(f"{where}: no candidates (\"candidates\" holds no text; decoding gives at least one "
                            f"per memory input): decode the split again with launch/generate.py --mode candidates")
        drawn = None
        if samples is not None:
            sample_where, sample_record = next(samples)
            if sample_record.get("memories") != record.get("memories"):
                raise DataError(f"{sample_where}: its \"memories\" differ from those of {where}: samples and "
                                f"candidates must be decoded from the same memory file")
            drawn = [t for per_input in text_lists(sample_where, sample_record, "samples") for t in per_input]
            if not drawn:  # MBR's expected utility over no references: every score NaN, the pick arbitrary
                raise DataError(f"{sample_where}: no samples (\"samples\" holds no text; sampling draws at least "
                                f"one per memory input): decode the split again with launch/generate.py --mode samples")
        opinion = None
        if opinions is not None:
            opinion = parse_no_memory_scores(*next(opinions), candidates, where)
        yield CandidateLine(where, record, pool, parse_generator_scores(where, record, candidates), drawn,
                            next(retrieved) if retrieved is not None else None, opinion)
    for aligned in (samples, retrieved, opinions):
        if aligned is not None:
            next(aligned, None)  # past the end: an aligned file's line count is checked


def read_candidates(path: Path, num_examples: int, split: str, samples_path: Path | None = None,
                    retrieved: Iterator[list[str]] | None = None,
                    no_memory_path: Path | None = None) -> list[CandidateLine]:
    """Every line of a candidates file (see ``iter_candidates``)."""
    return list(iter_candidates(path, num_examples, split, samples_path, retrieved, no_memory_path))


FEATURES = ("generator", "mbr")


def line_mbr_scores(line: CandidateLine, cfg: SelectorConfig, bleu_tokenize: str) -> list[float]:
    """The MBR score of each of the line's candidates with the ``selector.mbr_*`` settings (a
    fixed ``mbr_retrieved_weight``)."""
    if cfg.mbr_retrieved_weight is None:
        raise ValueError("selector.mbr_retrieved_weight is null (chosen on dev): score with the chosen weight")
    return line_mbr_score_sets(line, cfg, bleu_tokenize, [(cfg.mbr_temperature, cfg.mbr_retrieved_weight)])[0]


def line_mbr_score_sets(line: CandidateLine, cfg: SelectorConfig, bleu_tokenize: str,
                        settings: list[tuple[float | None, float]]) -> list[list[float]]:
    """``line_mbr_scores`` with each of ``settings`` in turn, a (``mbr_temperature``,
    ``mbr_retrieved_weight``) pair."""
    references = None
    if cfg.mbr_references == "samples":
        if line.samples is None:
            raise DataError(f"{line.where}: selector.mbr_references is samples but no samples were read with "
                            f"these candidates: decode them with launch/generate.py --mode samples")
        references = line.samples
    weighted = any(t is not None for t, _ in settings)
    scores = require_generator_scores(line, "selector.mbr_temperature") if weighted else None
    if max(w for _, w in settings) > 0 and line.retrieved is None:
        raise ValueError(f"{line.where}: selector.mbr_retrieved_weight weighs the retrieved memory, but none was "
                         f"read with these candidates (iter_retrieved)")
    return mbr_score_sets(line.pool, scores, cfg.mbr_utility, settings, bleu_tokenize, references,
                          line.retrieved or [])


def with_no_memory_opinion(line: CandidateLine, scores: list[float], weight: float) -> list[float]:
    """MBR's ``scores`` of the line's candidates plus ``weight`` times the no-memory baseline's
    score of each (``selector.no_memory_weight``); as they are at weight 0."""
    if weight == 0:
        return scores
    if line.no_memory_scores is None:
        raise ValueError(f"{line.where}: selector.no_memory_weight weighs the no-memory baseline's scores, but none "
                         f"were read with these candidates")
    return [s + weight * opinion for s, opinion in zip(scores, line.no_memory_scores)]


def candidate_features(line: CandidateLine, names: list[str], cfg: SelectorConfig,
                       bleu_tokenize: str) -> list[list[float]] | None:
    """The values of the features ``names`` (see ``SelectorConfig.features``) for each of the
    line's candidates, in that order; None for no features."""
    if not names:
        return None
    columns = []
    for name in names:
        if name == "generator":
            columns.append(require_generator_scores(line, "the selector feature 'generator'"))
        elif name == "mbr":
            columns.append([s / 100 for s in line_mbr_scores(line, cfg, bleu_tokenize)])  # the generator's scale
        else:
            raise ValueError(f"unknown selector feature {name!r}; choose from {', '.join(FEATURES)}")
    return [list(values) for values in zip(*columns)]


def selector_examples(candidates_path: Path, examples: list[Example], metric: Callable[[str, str], float],
                      split: str, config: Config | None = None,
                      retrieved: Iterator[list[str]] | None = None) -> list[SelectorExample]:
    """Each example's candidates (over all of its memory inputs) with their metric against its
    target and, given the run's ``config``, the values of ``selector.features`` (with each
    example's ``retrieved`` memory, where they read it)."""
    lines = read_candidates(candidates_path, len(examples), split, retrieved=retrieved)
    names = config.selector.features if config is not None else []
    return [SelectorExample(example.source, line.pool, [metric(c, example.target) for c in line.pool],
                            candidate_features(line, names, config.selector, config.data.bleu_tokenize)
                            if names else None)
            for line, example in zip(lines, examples)]
