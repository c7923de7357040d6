"""Crash-safe file output: every artifact is written to a temporary name, then renamed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    A crash before the rename leaves ``path`` untouched, so a half-written file never
    looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def json_line(record: Any) -> str:
    """One JSON-lines record: UTF-8 kept readable, keys in insertion order."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def atomic_write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    """Write one JSON object per line to ``path`` atomically."""
    with atomic_open(path) as f:
        for record in records:
            f.write(json_line(record))


def read_jsonl(path: str | Path) -> list[Any]:
    """Read a JSON-lines artifact written by this project."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def one_line(text: str) -> str:
    """``text`` with every line boundary Python knows (\\n, \\r, \\u2028, ...) made a space."""
    return " ".join(text.splitlines())


def read_lines(path: str | Path) -> list[str]:
    """The lines of a text artifact (one per dataset line), split on \\n only."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    return text.split("\n")[:-1] if text else []
