"""The run directory: where each artifact of a run lives (see docs/internals.md). Free of torch,
so that tools that only read runs (results/translation.py) start in a moment."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


NO_MEMORY = "no_memory"  # the no-memory baseline's round in the metrics rows, and its stage


def stage_of(round_name: int | str) -> str:
    """The stage, and directory under the run, of a metrics row's round: ``round_K``, or
    ``no_memory`` for the no-memory baseline's hypotheses."""
    return NO_MEMORY if round_name == NO_MEMORY else f"round_{round_name}"


@dataclass(frozen=True)
class RunPaths:
    """Where each artifact of a run lives under its directory ``root`` (run.root/run.name):
    one place that names them, for every stage, launcher and report."""

    root: Path
    generator_dir: str = "generator"  # relative to root: no_memory/generator for the lift's baseline
    # relative to root: bench/selector_quality.py trains each selector variant beside the others
    selector_dir: str = "selector"
    selector_candidates_dir: str = "selector_candidates"

    def no_memory_baseline(self) -> RunPaths:
        """These paths with the lift's no-memory baseline, ``no_memory/generator``, as the generator."""
        return replace(self, generator_dir="no_memory/generator")

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def bm25_index(self) -> Path:
        return self.root / "memory" / "bm25" / "index"

    @property
    def generator(self) -> Path:
        return self.root / self.generator_dir

    def bm25_memory(self, split: str) -> Path:
        return self.root / "memory" / "bm25" / f"{split}.jsonl"

    @property
    def selector(self) -> Path:
        return self.root / self.selector_dir

    @property
    def selector_candidates(self) -> Path:
        """The generator's candidates for the selector's train subset (lines follow the subset)."""
        return self.root / self.selector_candidates_dir / "train.jsonl"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    def round_dir(self, k: int | str) -> Path:
        """Round ``k``'s directory, or (``NO_MEMORY``) the no-memory baseline's."""
        return self.root / stage_of(k)

    def candidates(self, k: int, split: str) -> Path:
        return self.round_dir(k) / "candidates" / f"{split}.jsonl"

    def samples(self, k: int, split: str) -> Path:
        return self.round_dir(k) / "samples" / f"{split}.jsonl"

    def hyps(self, k: int, split: str) -> Path:
        return self.round_dir(k) / "hyps" / f"{split}.txt"

    def no_memory_scores(self, k: int, split: str) -> Path:
        """The no-memory baseline's score of each of round K's candidates (``selfmem/select/no_memory.py``)."""
        return self.round_dir(k) / "no_memory_scores" / f"{split}.jsonl"

    def round_memory(self, k: int, split: str) -> Path:
        return self.round_dir(k) / "memory" / f"{split}.jsonl"
