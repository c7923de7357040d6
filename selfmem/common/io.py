"""Crash-safe file output: every artifact is written to a temporary name, then renamed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
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


def discard_partial(path: str | Path) -> None:
    """Remove the temporary files that a process killed inside ``atomic_open(path)`` left
    (never renamed; a checkpoint's can be gigabytes)."""
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def _sibling(path: Path, role: str) -> Path:
    """The hidden sibling of directory ``path`` that ``atomic_directory`` uses for ``role``."""
    return path.with_name(f".{path.name}.{role}")


def _sync(path: Path) -> None:
    """fsync a file or a directory (a directory's entries: the names renamed into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_directory(path: str | Path) -> None:
    """Undo what a crash inside ``atomic_directory(path)`` left behind: the old directory goes
    back in place if the new one never arrived, and no temporary sibling remains."""
    path = Path(path)
    aside, staging = _sibling(path, "replaced"), _sibling(path, "staging")
    if aside.exists() and not path.exists():
        os.replace(aside, path)
    for leftover in (aside, staging):
        if leftover.exists():
            shutil.rmtree(leftover)


@contextmanager
def atomic_directory(path: str | Path, keep: Sequence[str] = ()) -> Iterator[Path]:
    """Write directory ``path`` as one unit: yields an empty temporary sibling to fill; on
    success its files are synced and it replaces ``path`` whole.

    The old directory is renamed aside, the new one renamed in, the parent directory synced
    and the old one removed, so a reader finds the complete old directory or the complete
    new one, never a mix (``recover_directory`` puts the old one back after a crash between
    the two renames). ``keep`` names files of the old directory that the new one carries on
    (a training run's checkpoint and log beside its model), hard-linked where the file
    system allows: a checkpoint can be gigabytes.
    """
    path = Path(path)
    recover_directory(path)
    staging = _sibling(path, "staging")
    staging.mkdir(parents=True)
    try:
        yield staging
        for name in keep:
            if (path / name).exists():
                try:
                    os.link(path / name, staging / name)
                except OSError:  # no hard links here (some network file systems)
                    shutil.copy2(path / name, staging / name)
        for file in staging.rglob("*"):
            _sync(file)
        _sync(staging)
        aside, replacing = _sibling(path, "replaced"), path.exists()
        if replacing:
            os.replace(path, aside)
        os.replace(staging, path)
        _sync(path.parent)
        if replacing:
            shutil.rmtree(aside)
    except BaseException:
        recover_directory(path)
        raise


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


def json_error(error: json.JSONDecodeError, line: str) -> str:
    """What is wrong with one line of JSON, for a message that already names its file and line.

    A line that stops before its JSON does is said to be cut short: the decoder would point
    past the line's newline, at a misleading "line 2 column 1".
    """
    what = error.msg.removesuffix(" at")  # "Invalid control character at"
    if error.pos >= len(line.rstrip()):
        return f"{what} at the end of the line: the line is cut short"
    return f"{what} at column {error.colno}"


def one_line(text: str) -> str:
    """``text`` with every line boundary Python knows (\\n, \\r, \\u2028, ...) made a space."""
    return " ".join(text.splitlines())


def read_lines(path: str | Path) -> list[str]:
    """The lines of a text artifact (one per dataset line), split on \\n only."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    return text.split("\n")[:-1] if text else []
