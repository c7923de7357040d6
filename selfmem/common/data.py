"""JSON-lines datasets: one example a line, field names from the config.

Every artifact of a run is aligned line by line to its dataset, so a dataset is read
strictly: a bad line is an error naming the file and the line, never skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from selfmem.common.config import DataConfig
from selfmem.common.io import atomic_open
from selfmem.common.records import DataError, field, is_texts, iter_records

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    source: str
    target: str


def _text(value: object, name: str, where: str, turn_separator: str | None) -> str:
    if isinstance(value, str):
        return value
    if turn_separator is not None and is_texts(value):
        return turn_separator.join(value)
    expected = "a string or a list of strings (dialogue turns)" if turn_separator is not None else "a string"
    raise DataError(f"{where}: field '{name}' must be {expected}, got {type(value).__name__}")


def iter_examples(
    path: str | Path,
    source_field: str,
    target_field: str,
    turn_separator: str | None = None,
    max_examples: int | None = None,
) -> Iterator[Example]:
    """The examples of ``path`` (JSON lines), read one at a time as the caller asks for them.
    ``turn_separator`` set: a field may be a list of turns, joined by it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    empty = True
    for where, record in islice(iter_records(path), max_examples):  # lines past the limit are not read
        source = _text(field(where, record, source_field), source_field, where, turn_separator)
        target = _text(field(where, record, target_field), target_field, where, turn_separator)
        if not source.strip():
            raise DataError(f"{where}: empty source in field '{source_field}'")
        empty = False
        yield Example(source, target)
    if empty:
        raise DataError(f"{path}: no examples (the file is empty)")


def read_examples(path: str | Path, *args, **kwargs) -> list[Example]:
    """Every example of ``path``; the other arguments are ``iter_examples``'s."""
    return list(iter_examples(path, *args, **kwargs))


def split_file(config: DataConfig, split: str) -> Path:
    """The dataset file of ``split`` (train, dev or test); a DataError naming ``data.dir`` if it is missing."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    path = Path(config.dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found (data.dir is {config.dir})")
    return path


def iter_split(config: DataConfig, split: str) -> Iterator[Example]:
    """The examples of ``split`` (train, dev or test) as the data config describes them, one at a
    time: what a stage streams through never holds the split."""
    return iter_examples(
        split_file(config, split),
        config.source_field,
        config.target_field,
        turn_separator=config.turn_separator if config.task == "dialogue" else None,
        max_examples=config.max_examples,
    )


def load_split(config: DataConfig, split: str) -> list[Example]:
    """Every example of ``split`` (see ``iter_split``)."""
    return list(iter_split(config, split))


_BPE_MARKER = re.compile(r"@@( |$)")


def remove_bpe(text: str) -> str:
    """Undo subword-nmt segmentation: ``"Kommis@@ sion"`` -> ``"Kommission"``."""
    return _BPE_MARKER.sub("", text)


def convert_parallel_tsv(
    input_path: str | Path, output_path: str | Path, source_field: str = "src", target_field: str = "trg"
) -> int:
    """Convert ``source<TAB>target`` lines (BPE markers removed) to JSON lines; returns the count.

    This is the form in which the Selfmem authors distribute JRC-Acquis; removing
    ``@@ `` markers is harmless on sides that were never segmented.
    """
    input_path = Path(input_path)
    count = 0
    with open(input_path, encoding="utf-8") as src, atomic_open(output_path) as out:
        for lineno, line in enumerate(src, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise DataError(f"{input_path}:{lineno}: expected source<TAB>target, found {len(fields)} fields")
            source, target = (remove_bpe(text.strip()) for text in fields)
            out.write(json.dumps({source_field: source, target_field: target}, ensure_ascii=False) + "\n")
            count += 1
    return count
