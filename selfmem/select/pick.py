"""Turning selector scores into next-round memories: top-B (replace) or a growing list (augment).

Both are pure functions of an example's candidates and their scores, so an example's
memories are the same whichever rank derives them.
"""

from __future__ import annotations


def top_b(candidates: list[str], scores: list[float], b: int) -> list[str]:
    """The ``b`` best distinct candidates, best first: higher score first, ties by candidate
    order; a candidate text that occurs several times counts once, at its best place."""
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    picked: list[str] = []
    for i in sorted(range(len(candidates)), key=lambda i: (-scores[i], i)):
        if candidates[i] not in picked:
            picked.append(candidates[i])
            if len(picked) == b:
                break
    return picked


def augment(memories: list[str], pick: str, max_memories: int, keep_retrieved: bool = True) -> list[str]:
    """``memories`` (the retrieved memory first, then self-memories, oldest first) with
    ``pick`` appended, unless it is already there; beyond ``max_memories`` the oldest
    self-memory goes (or the retrieved one, oldest of all, when ``keep_retrieved`` is off)."""
    if max_memories < (2 if keep_retrieved else 1):
        raise ValueError(f"max_memories must leave room for a self-memory, got {max_memories}")
    grown = memories if pick in memories else [*memories, pick]
    while len(grown) > max_memories:
        oldest = 1 if keep_retrieved else 0
        grown = grown[:oldest] + grown[oldest + 1:]
    return grown
