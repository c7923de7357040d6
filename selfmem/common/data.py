"""JSON-lines datasets: one example a line, field names from the config.

Every artifact of a run is aligned line by line to its dataset, so a dataset is read
strictly: a bad line is an error naming the file and the line, never skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from selfmem.common.config import DataConfig
from selfmem.common.io import atomic_open, json_error

SPLITS = ("train", "dev", "test")


class DataError(ValueError):
    """A dataset file that cannot be read as the config describes it."""


@dataclass(frozen=True)
class Example:
    source: str
    target: str


def _text(value: object, field: str, where: str, turn_separator: str | None) -> str:
    if isinstance(value, str):
        return value
    if turn_separator is not None and isinstance(value, list) and all(isinstance(t, str) for t in value):
        return turn_separator.join(value)
    expected = "a string or a list of strings (dialogue turns)" if turn_separator is not None else "a string"
    raise DataError(f"{where}: field '{field}' must be {expected}, got {type(value).__name__}")


def read_examples(
    path: str | Path,
    source_field: str,
    target_field: str,
    turn_separator: str | None = None,
    max_examples: int | None = None,
) -> list[Example]:
    """Read ``path`` (JSON lines). ``turn_separator`` set: a field may be a list of turns, joined by it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    examples = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if max_examples is not None and len(examples) >= max_examples:
                break
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if not line.strip():
                raise DataError(f"{where}: empty line (every line must hold one example)")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({json_error(e, line)})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for field in (source_field, target_field):
                if field not in record:
                    present = ", ".join(record) or "none"
                    raise DataError(f"{where}: missing field '{field}' (fields present: {present})")
            source = _text(record[source_field], source_field, where, turn_separator)
            target = _text(record[target_field], target_field, where, turn_separator)
            if not source.strip():
                raise DataError(f"{where}: empty source in field '{source_field}'")
            examples.append(Example(source, target))
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


def split_file(config: DataConfig, split: str) -> Path:
    """The dataset file of ``split`` (train, dev or test); a DataError naming ``data.dir`` if it is missing."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    path = Path(config.dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found (data.dir is {config.dir})")
    return path


def load_split(config: DataConfig, split: str) -> list[Example]:
    """The examples of ``split`` (train, dev or test) as the data config describes them."""
    return read_examples(
        split_file(config, split),
        config.source_field,
        config.target_field,
        turn_separator=config.turn_separator if config.task == "dialogue" else None,
        max_examples=config.max_examples,
    )


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
