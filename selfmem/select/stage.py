"""The selection stage: score every candidate with the selector, all-gather, choose memories.

Pairs are packed into length-sorted token-budget batches that depend only on the data,
and rank r scores every world_size-th batch, so each pair's score is computed the same
way whatever the number of ranks; the scores are all-gathered and every rank derives the
same next memories (``top_b`` or ``augment``). Rank 0 writes ``round_K/memory/{split}.jsonl``:
``{"memories": [[m1], [m2], ...]}`` (replace: one memory input per kept candidate) or
``{"memories": [[retrieved, self_1, ...]]}`` (augment: one growing list).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from selfmem.common.batching import token_budget_batches
from selfmem.common.config import Config
from selfmem.common.data import load_split
from selfmem.common.distributed import DistEnv, all_gather, on_main
from selfmem.common.io import atomic_write_jsonl, read_jsonl
from selfmem.common.run import RunPaths
from selfmem.models.selector import Selector, pair_encoder, selector_tokenizer
from selfmem.select.pick import augment, top_b

log = logging.getLogger(__name__)


@torch.no_grad()
def score_pairs(selector: Selector, pairs: list[list[int]], pad_id: int, env: DistEnv, max_tokens: int) -> list[float]:
    """The selector's score of every encoded pair, in order: the same list on every rank."""
    batches = token_budget_batches([(len(p),) for p in pairs], max_tokens, seed=0, epoch=0)
    mine = batches[env.rank::env.world_size]
    scores: dict[int, float] = {}
    for batch in tqdm(mine, desc="select", unit="batch", disable=not env.is_main):
        width = max(len(pairs[i]) for i in batch)
        ids = torch.tensor([pairs[i] + [pad_id] * (width - len(pairs[i])) for i in batch], device=env.device)
        scores.update(zip(batch, selector(ids).float().tolist()))
    merged = {i: s for part in all_gather(scores) for i, s in part.items()}
    return [merged[i] for i in range(len(pairs))]


def select_memories(config: Config, env: DistEnv, paths: RunPaths, split: str, round_k: int,
                    candidates_path: Path | None = None) -> list[str]:
    """Choose the next memories of ``split`` from round K's candidates into round K's memory
    file; returns the selector's top pick of each example (the same list on every rank)."""
    cfg = config.selector
    candidates_path = candidates_path or paths.candidates(round_k, split)
    records = read_jsonl(candidates_path)
    examples = load_split(config.data, split)
    if len(records) != len(examples):
        raise ValueError(f"{candidates_path}: {len(records)} lines for {len(examples)} {split} examples")
    tokenizer = selector_tokenizer(config, paths)
    selector = Selector.load(paths.selector, map_location=env.device)
    pair = pair_encoder(selector, tokenizer, cfg.max_len)
    # every example's candidates over all of its memory inputs compete together
    pools = [[c for per_input in r["candidates"] for c in per_input] for r in records]
    pairs = [pair(ex.source, c) for ex, pool in zip(examples, pools) for c in pool]
    flat = score_pairs(selector, pairs, tokenizer.pad_id, env, cfg.max_tokens)
    memories, picks, start = [], [], 0
    for record, pool in zip(records, pools):
        scores, start = flat[start:start + len(pool)], start + len(pool)
        best = top_b(pool, scores, cfg.beam if cfg.mode == "replace" else 1)
        picks.append(best[0] if best else "")
        if cfg.mode == "replace":
            memories.append([[m] for m in best])
        else:
            (current,) = record["memories"]  # augment keeps one memory list per example
            memories.append([augment(current, best[0], cfg.max_memories, cfg.keep_retrieved) if best else current])
    output = paths.round_memory(round_k, split)
    on_main(lambda: atomic_write_jsonl(output, ({"memories": m} for m in memories)))
    log.info("%s: %d memories chosen (%s, B = %d) -> %s", split, len(memories), cfg.mode, cfg.beam, output)
    return picks
