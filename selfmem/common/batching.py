"""Token-budget batches of similar-length examples, the same list on every rank.

An epoch's micro-batches depend only on the example sizes, the budget, the seed and
the epoch number, never on the number of ranks: a global step takes the next
``world_size * accumulate`` micro-batches and rank r takes every world_size-th of them.
So 2 ranks x 1 micro-batch and 1 rank x 2 accumulated micro-batches see the same data.
"""

from __future__ import annotations

import torch


def bucket(width: int) -> int:
    """``width`` rounded up to the next of 8, 12, 16, 24, 32, 48, 64, ... (powers of two and
    the points halfway between): a few lengths for a compiled model to see, at the cost of
    less than half as much padding again (the steps alternate x1.5 and x4/3)."""
    size = 8
    while size < width:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def packing_key(size: tuple[int, ...]) -> tuple[int, ...]:
    """An example's place in the order that batches are packed from: its later parts' lengths
    (the target's) rounded up to a bucket, then its first part's (the encoder input's) exactly.
    Each part is padded to its own longest, so sorting the parts apart, not by their sum,
    keeps a long source with a short target out of a batch of the reverse: on the translation
    and summarization corpora 3-11% of the batches' tokens are padding, against 13-28% by the
    sum (docs/benchmarks.md)."""
    return (*(bucket(part) for part in size[1:]), size[0])


def token_budget_batches(sizes: list[tuple[int, ...]], max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled micro-batches of example indices whose padded size fits ``max_tokens``.

    ``sizes[i]`` holds the lengths of example i's padded parts (e.g. encoder input and
    target); a batch of n examples costs n * sum(max of each part). Examples are sorted
    by ``packing_key`` with a seeded random tie order, packed greedily, and the batch order
    is shuffled, all from (seed, epoch).
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    noise = torch.rand(len(sizes), generator=generator).tolist()
    order = sorted(range(len(sizes)), key=lambda i: (packing_key(sizes[i]), noise[i]))
    batches, current, widest = [], [], None
    for i in order:
        grown = sizes[i] if widest is None else tuple(max(a, b) for a, b in zip(widest, sizes[i]))
        if current and (len(current) + 1) * sum(grown) > max_tokens:
            batches.append(current)
            current, grown = [], sizes[i]
        current.append(i)
        widest = grown
    if current:
        batches.append(current)
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[p] for p in permutation]
