"""Fingerprints: short hashes of config values and files, so that a changed input is noticed.

The lift keys each stage of ``state.json`` on one; a training checkpoint records the
config values it depends on and their fingerprint, so that it is resumed only under them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fingerprint(inputs: Sequence[Any]) -> str:
    """A short hash of ``inputs``: config sections (dataclasses), dicts, strings, numbers."""
    def plain(value: Any) -> Any:
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    text = json.dumps([plain(v) for v in inputs], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_values(config: Any, keys: Sequence[str], leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """The values of ``keys`` (dotted names; a section stands for each of its keys) in
    ``config``, by dotted name, less those named in ``leave_out``."""
    values = {}
    for key in keys:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if dataclasses.is_dataclass(value):
            values.update((f"{key}.{name}", v) for name, v in dataclasses.asdict(value).items())
        else:
            values[key] = value
    return {key: value for key, value in values.items() if key not in leave_out}


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_digest(path: str | Path | None) -> str | None:
    """The SHA-256 of a file, or of a directory's file names and bytes; None for no path.

    Stages that read a tokenizer or checkpoint named by a config path hash what is there,
    so new files behind an unchanged path rerun them.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(f for f in path.rglob("*") if f.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode("utf-8"))
    return digest.hexdigest()
