"""The JSON-lines files a user hands to a run (a dataset, a memory file, a candidates file),
read strictly: every line one JSON object, a memory or candidates file one line per example of
its dataset, each field checked where it is read, and every error naming its ``FILE:LINE`` and
what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfmem.common.io import json_error


class DataError(ValueError):
    """An input file (a dataset, a memory or candidates file) that cannot be read as expected."""


class CheckpointError(DataError):
    """A model or training checkpoint a stage cannot use: missing, damaged or cut short, or read
    with a tokenizer other than its own. An input error like a bad data line: the launchers end
    with its message alone, without a traceback."""


def iter_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each line's JSON object with its ``FILE:LINE`` (for messages), read as the caller asks
    for them; a missing file, invalid UTF-8, a blank line, a line that is not JSON or not an
    object is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if not line.strip():
                raise DataError(f"{where}: empty line (every line must hold one JSON object)")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({json_error(e, line)})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def iter_aligned(path: str | Path, num_examples: int, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The records of ``path`` one at a time; once they are all read, refused unless the file
    has one line per example of ``split`` (a consumer must read to the end)."""
    count = 0
    for where, record in iter_records(path):
        count += 1
        if count <= num_examples:
            yield where, record
    if count != num_examples:
        raise DataError(f"{path}: {count} lines for {num_examples} {split} examples (one line per "
                        f"example, in dataset order)")


def read_aligned(path: str | Path, num_examples: int, split: str) -> list[tuple[str, dict[str, Any]]]:
    """Every record of ``path`` (see ``iter_aligned``)."""
    return list(iter_aligned(path, num_examples, split))


def field(where: str, record: dict[str, Any], name: str) -> Any:
    """``record[name]``; its absence is an error naming the fields the line has."""
    if name not in record:
        raise DataError(f"{where}: missing field '{name}' (fields present: {', '.join(record) or 'none'})")
    return record[name]


def is_texts(value: Any) -> bool:
    """True for a list of strings."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def numbers_shaped_like(value: Any, lists: list[list]) -> bool:
    """True for a list of lists of numbers (not booleans) with the lengths of ``lists``."""
    return (isinstance(value, list) and len(value) == len(lists)
            and all(isinstance(v, list) and len(v) == len(x) for v, x in zip(value, lists))
            and all(isinstance(n, (int, float)) and not isinstance(n, bool) for v in value for n in v))


def text_lists(where: str, record: dict[str, Any], name: str) -> list[list[str]]:
    """``record[name]`` checked to be a list of lists of strings."""
    value = field(where, record, name)
    if not (isinstance(value, list) and all(is_texts(v) for v in value)):
        raise DataError(f"{where}: \"{name}\" must be a list of lists of strings, got {describe(value)}")
    return value


def describe(value: Any) -> str:
    """A short account of a JSON value's shape for messages: ``a string``, ``a list of str and list``."""
    if isinstance(value, list):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a list of {' and '.join(kinds)}" if kinds else "an empty list"
    return {str: "a string", dict: "an object", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}")


def memory_sets(where: str, record: dict, num_memories: int) -> list[list[str]]:
    """The memory inputs of one memory-file line: its ``"memories"`` is either a ranked list of
    strings (retrieval: the first ``num_memories`` form the one memory input, as in training) or
    a list of memory inputs, each a list of strings; ``where`` is its ``FILE:LINE``, for errors."""
    memories = field(where, record, "memories")
    if is_texts(memories):
        return [memories[:num_memories]]
    if isinstance(memories, list) and all(is_texts(m) for m in memories):
        return [list(m) for m in memories]
    raise DataError(f"{where}: \"memories\" must be a list of strings (ranked retrieved memories) or a list "
                    f"of memory inputs, each a list of strings; got {describe(memories)}")
