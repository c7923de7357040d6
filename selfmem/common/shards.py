"""A split's output lines written by several ranks and merged in example order, streaming.

Each rank writes the finished output lines of its examples to its own shard file, each line
keyed by its example's index, keys ascending. Rank 0 merges the shards with a k-way merge
(``heapq.merge``): it holds one line per shard at a time, never the split, and writes the
output line by line. The lines are copied as bytes, so the output is the same file whatever
the number of ranks and however the examples were shared out.

A long split can also be resumed: while it works, a rank appends each finished group of
lines to a part file of its own (``progress_log``, flushed per group), and a
later attempt at the same output with the same inputs reads the complete lines that any
earlier attempt left (``kept_lines``), at any number of ranks, instead of computing them
again. Whether the inputs are the same is the caller's to know (the lift's stage
fingerprints); a caller that does not know removes the parts first (``drop_parts``).
"""

from __future__ import annotations

import heapq
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
from operator import itemgetter
from pathlib import Path

from selfmem.common.io import atomic_open

SYNC_SECONDS = 10.0  # how often a part file reaches the disk, at most
Keyed = tuple[int, bytes]  # an example's index and its output line, newline included


def _keyed_line(key: int, line: str) -> bytes:
    """One line of a shard or part file: the example's index, a tab, its output line."""
    return b"%d\t%s" % (key, line.encode("utf-8"))


def shard_paths(output: Path, world_size: int) -> list[Path]:
    """Each rank's shard of ``output``: hidden files beside it (on the shared file system)."""
    return [output.parent / f".{output.name}.rank{rank}" for rank in range(world_size)]


def write_shard(path: Path, lines: Iterable[tuple[int, str]]) -> None:
    """Write ``(example, output line)`` pairs, keys ascending, as shard ``path`` (atomically).

    ``lines`` is consumed as it is written: a generator that computes them chunk by chunk
    never holds them all.
    """
    previous = -1
    with atomic_open(path, "wb") as f:
        for key, line in lines:
            if key <= previous:  # the merge relies on it: a bug in the caller, not in the data
                raise ValueError(f"{path}: example {key} written after example {previous}; keys must ascend")
            previous = key
            f.write(_keyed_line(key, line))


def read_shard(path: Path) -> Iterator[Keyed]:
    """The ``(example, line)`` pairs of a shard, one at a time."""
    with open(path, "rb") as f:
        for raw in f:  # binary: split on b"\n" only, whatever the line holds
            key, _, line = raw.partition(b"\t")
            yield int(key), line


def merge_lines(sources: Iterable[Iterator[Keyed]], output: Path, keys: Iterable[int]) -> None:
    """Write the lines of ``sources`` (each keyed, keys ascending) to ``output`` in key order;
    the keys must be exactly ``keys``, in order (every example once)."""
    expected = iter(keys)
    with atomic_open(output, "wb") as out:
        for key, line in heapq.merge(*sources, key=itemgetter(0)):
            want = next(expected, None)
            if key != want:
                what = "the end" if want is None else f"example {want}"
                raise RuntimeError(f"{output}: merging its parts, found example {key} where {what} was due "
                                   f"(a part is missing, damaged or from another run)")
            out.write(line)
        missing = next(expected, None)
        if missing is not None:
            raise RuntimeError(f"{output}: merging its parts, example {missing} is missing from every part")


def merge_shards(shards: list[Path], output: Path, count: int) -> None:
    """Merge the shards of ``output`` (examples ``0 .. count-1``) into it, then delete them and
    the output's part files (their lines are in the shards)."""
    with ExitStack() as stack:
        sources = [stack.enter_context(closing(read_shard(shard))) for shard in shards]  # closed on error too
        merge_lines(sources, output, range(count))
    for shard in shards:
        shard.unlink()
    drop_parts(output)


def part_paths(output: Path) -> list[Path]:
    """The part files that attempts at ``output`` left beside it (every rank's, every attempt's)."""
    return sorted(output.parent.glob(f".{output.name}.part-*"))


def drop_parts(output: Path) -> None:
    """Delete the part files of ``output``: written, or not to be resumed."""
    for part in part_paths(output):
        part.unlink(missing_ok=True)


def kept_lines(output: Path, wanted: Callable[[int], bool]) -> dict[int, str]:
    """The complete lines that earlier attempts at ``output`` left in its part files, of the
    examples ``wanted`` (this rank's share), by example."""
    kept: dict[int, str] = {}
    for part in part_paths(output):
        with open(part, "rb") as f:
            for raw in f:
                key, tab, line = raw.partition(b"\t")
                if not (tab and key.isdigit() and raw.endswith(b"\n")):  # cut short (or lost) by a kill
                    break
                # after a machine's crash a block the file system never wrote reads as zeros, and holds
                # no newline: every line it touches holds a NUL. Skipped, so decoded again (as is a
                # hypothesis that holds one: a byte-fallback token can decode to it)
                if b"\0" in line:
                    continue
                if wanted(int(key)):
                    kept[int(key)] = line.decode("utf-8")
    return kept


@contextmanager
def progress_log(output: Path, rank: int) -> Iterator[Callable[[Iterable[tuple[int, str]]], None]]:
    """A function that appends ``(example, output line)`` pairs to a new part file of
    ``output`` (any order) for ``kept_lines`` to find after a kill: flushed at each call
    (a killed process loses nothing written), synced every ``SYNC_SECONDS`` at most (a
    crashed machine loses little, and many short calls cost no disk flush each)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.parent / f".{output.name}.part-{rank}-{secrets.token_hex(4)}"
    synced = [time.monotonic()]
    with open(path, "ab") as f:
        def append(lines: Iterable[tuple[int, str]]) -> None:
            f.write(b"".join(_keyed_line(key, line) for key, line in lines))
            f.flush()
            if time.monotonic() - synced[0] >= SYNC_SECONDS:
                os.fsync(f.fileno())
                synced[0] = time.monotonic()
        yield append
