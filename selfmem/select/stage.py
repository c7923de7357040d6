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
from selfmem.common.config import Config, SelectorConfig
from selfmem.common.data import load_split
from selfmem.common.distributed import DistEnv, all_gather, on_main
from selfmem.common.io import atomic_write_jsonl
from selfmem.common.records import DataError, text_lists
from selfmem.common.run import RunPaths
from selfmem.models.selector import Selector, pair_encoder, selector_tokenizer
from selfmem.select.candidates import CandidateLine, read_candidates
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


def check_selector_config(cfg: SelectorConfig) -> None:
    """Refuse selector settings that cannot choose memories as asked, before any work."""
    if cfg.beam < 1:
        raise ValueError(f"selector.beam must be at least 1, got {cfg.beam}")
    if cfg.mode == "augment" and cfg.beam > 1:
        raise ValueError(f"selector.mode augment appends the selector's one top pick to each example's memory "
                         f"list, so selector.beam (B = {cfg.beam}, the memories kept per example) must be 1; "
                         f"keep B memories with selector.mode replace")


def augmented_list(line: CandidateLine) -> list[str]:
    """The one memory list that augment mode grows (its candidates were decoded with it)."""
    inputs = text_lists(line.where, line.record, "memories")
    if len(inputs) != 1:
        raise DataError(f"{line.where}: selector.mode augment grows one memory list per example, but "
                        f"\"memories\" holds {len(inputs)} memory inputs (a top-B file of selector.mode "
                        f"replace?): decode from a memory file of one list per example")
    return inputs[0]


def select_memories(config: Config, env: DistEnv, paths: RunPaths, split: str, round_k: int,
                    candidates_path: Path | None = None) -> list[str]:
    """Choose the next memories of ``split`` from round K's candidates into round K's memory
    file; returns the selector's top pick of each example (the same list on every rank)."""
    cfg = config.selector
    check_selector_config(cfg)
    examples = load_split(config.data, split)
    # every example's candidates over all of its memory inputs compete together
    lines = read_candidates(candidates_path or paths.candidates(round_k, split), len(examples), split)
    grown = [augmented_list(line) for line in lines] if cfg.mode == "augment" else None
    tokenizer = selector_tokenizer(config, paths)
    selector = Selector.load(paths.selector, map_location=env.device)
    pair = pair_encoder(selector, tokenizer, cfg.max_len)
    pairs = [pair(ex.source, c) for ex, line in zip(examples, lines) for c in line.pool]
    flat = score_pairs(selector, pairs, tokenizer.pad_id, env, cfg.max_tokens)
    memories, picks, start = [], [], 0
    for i, line in enumerate(lines):
        scores, start = flat[start:start + len(line.pool)], start + len(line.pool)
        best = top_b(line.pool, scores, cfg.beam)
        picks.append(best[0])
        if grown is None:
            memories.append([[m] for m in best])
        else:
            memories.append([augment(grown[i], best[0], cfg.max_memories, cfg.keep_retrieved)])
    output = paths.round_memory(round_k, split)
    on_main(lambda: atomic_write_jsonl(output, ({"memories": m} for m in memories)))
    log.info("%s: %d memories chosen (%s, B = %d) -> %s", split, len(memories), cfg.mode, cfg.beam, output)
    return picks
