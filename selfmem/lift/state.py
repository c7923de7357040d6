"""``state.json``: which stages of a run are done, each with a fingerprint of its inputs.

A stage's fingerprint hashes what it reads: config values, data files, and the
fingerprints of the stages whose outputs it uses. So a changed input changes the
fingerprint of its stage and, through the chain, of every stage after it, and only those
are redone. A stage that was started with the same fingerprint and not finished (a crash,
a kill, a torchrun restart) is resumed as it stands: training stages continue from their
checkpoint, a round's decodings from the lines they had finished. A stage started afresh
first removes its old outputs (and their unfinished parts), so nothing made under other
inputs is ever resumed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfmem.common.digest import fingerprint
from selfmem.common.distributed import barrier, broadcast_from_main, on_main
from selfmem.common.io import atomic_write_text
from selfmem.common.shards import drop_parts

log = logging.getLogger(__name__)


def remove(paths: Sequence[Path]) -> None:
    """Delete files and directories that exist, and the part files of an unfinished file."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        drop_parts(path)


class RunState:
    """The stages of ``state.json``; every rank holds the same copy, rank 0 writes it."""

    def __init__(self, path: Path):
        self.path = path
        # read once, by rank 0: another rank reading later could see a record rank 0 has
        # already changed, and then take another branch than rank 0 at the next stage
        self.stages: dict[str, dict] = broadcast_from_main(on_main(self._read))

    def _read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text(encoding="utf-8"))["stages"] if self.path.exists() else {}

    def _record(self, name: str, record: dict | None) -> None:
        if record is None:
            self.stages.pop(name, None)
        else:
            self.stages[name] = record
        text = json.dumps({"stages": self.stages}, indent=1) + "\n"
        on_main(lambda: atomic_write_text(self.path, text))

    def run(self, name: str, inputs: Sequence[Any], outputs: Sequence[Path], work: Callable[[], Any]) -> str:
        """Run stage ``name`` unless it is done with these inputs; returns its fingerprint."""
        key = fingerprint([name, *inputs])
        record = self.stages.get(name, {})
        if record.get("fingerprint") == key and record.get("done"):
            log.info("stage %s: done (%s), skipped", name, key)
            return key
        resumed = record.get("fingerprint") == key
        if resumed:
            log.info("stage %s: resuming (%s)", name, key)
        else:
            log.info("stage %s: %s (%s)", name, "inputs changed, redone" if record else "starting", key)
            # the old record goes first and the new one comes after the old outputs are gone: a
            # kill in between leaves no record, so the next attempt removes them again, neither
            # skipping the stage (marked done without its files) nor resuming from what is left
            self._record(name, None)
            on_main(lambda: remove(outputs))
            self._record(name, {"fingerprint": key, "done": False})
        started = time.perf_counter()
        work()
        barrier()
        seconds = round(time.perf_counter() - started, 1)
        # a resumed stage's seconds are its last attempt's: an interrupted one leaves no time
        self._record(name, {"fingerprint": key, "done": True, "seconds": seconds,
                            **({"resumed": True} if resumed else {})})
        log.info("stage %s: done in %.1f s", name, seconds)
        return key

    def seconds(self) -> dict[str, float | None]:
        """Each stage's wall time (of the run that finished it; None while unfinished)."""
        return {name: record.get("seconds") for name, record in self.stages.items()}

    def resumed(self) -> set[str]:
        """The stages finished by a run that resumed them: their seconds are that run's only."""
        return {name for name, record in self.stages.items() if record.get("resumed")}

    def forget(self, name: str, outputs: Sequence[Path]) -> None:
        """Drop a stage that is no longer part of the run, with its outputs."""
        if name in self.stages:
            self._record(name, None)  # first: a kill in between must not leave a done stage without files
            on_main(lambda: remove(outputs))
