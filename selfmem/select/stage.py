"""The selection stage: score every candidate with the selector, choose memories, merge.

The split is read a chunk of ``CHUNK_EXAMPLES`` examples at a time. With the trained selector
(``selector.kind: trained``), a chunk's pairs are packed into length-sorted token-budget
batches that depend only on the data, and rank r scores every world_size-th batch, so each
pair's score is computed the same way whatever the number of ranks; the chunk's scores are
all-gathered. With minimum Bayes risk (``mbr``), an example's scores depend on that example
alone (its candidates, their generator and no-memory scores, its samples and top BM25 hits),
and each rank scores only its own examples. Rank r derives the next memories (``top_b``
or ``augment``) of the chunk's every world_size-th example into its shard. Rank 0 merges the
shards, streaming, into ``round_K/memory/{split}.jsonl``: ``{"memories": [[m1], [m2], ...]}``
(replace: one memory input per kept candidate) or ``{"memories": [[retrieved, self_1, ...]]}``
(augment: one growing list). No rank holds more than a chunk of candidates and scores (and
the top picks it returns, one text per example, for the lift's metrics).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from itertools import accumulate, islice, repeat
from pathlib import Path

import torch
from tqdm import tqdm

from selfmem.common.batching import token_budget_batches
from selfmem.common.config import Config, SelectorConfig
from selfmem.common.data import Example, iter_split, load_split
from selfmem.common.distributed import DistEnv, agreed, all_gather, barrier, gather_to_main, in_order, on_main
from selfmem.common.io import json_line
from selfmem.common.metrics import headline_score
from selfmem.common.records import DataError, text_lists
from selfmem.common.run import RunPaths
from selfmem.common.shards import merge_shards, shard_paths, write_shard
from selfmem.models.selector import Selector, pair_encoder, selector_tokenizer
from selfmem.retrieve.memory import bm25_hits, iter_retrieved
from selfmem.select.candidates import (
    FEATURES,
    CandidateLine,
    candidate_features,
    iter_candidates,
    line_mbr_score_sets,
    line_mbr_scores,
    require_generator_scores,
    with_no_memory_opinion,
)
from selfmem.select.no_memory import ensure_no_memory_scores
from selfmem.select.pick import augment, top_b

log = logging.getLogger(__name__)

# Examples whose candidates are scored as one set of batches: it bounds what a rank holds (a
# chunk's candidates, encoded pairs and scores) whatever the split's size, and a split of at
# most this many (a usual dev or test set) is batched exactly as if read whole.
CHUNK_EXAMPLES = 4096


@torch.no_grad()
def score_pairs(selector: Selector, pairs: list[list[int]], pad_id: int, env: DistEnv, max_tokens: int,
                features: list[list[float]] | None = None, progress: bool = True) -> list[float]:
    """The selector's score of every encoded pair (with its candidate's feature values, for a
    selector with features), in order: the same list on every rank; ``progress`` shows a bar."""
    batches = token_budget_batches([(len(p),) for p in pairs], max_tokens, seed=0, epoch=0)
    mine = env.share(batches)
    scores: dict[int, float] = {}
    for batch in tqdm(mine, desc="select", unit="batch", disable=not (progress and env.is_main)):
        width = max(len(pairs[i]) for i in batch)
        ids = torch.tensor([pairs[i] + [pad_id] * (width - len(pairs[i])) for i in batch], device=env.device)
        values = None if features is None else torch.tensor([features[i] for i in batch], device=env.device)
        scores.update(zip(batch, selector(ids, values).float().tolist()))
    merged = {i: s for part in all_gather(scores) for i, s in part.items()}
    return [merged[i] for i in range(len(pairs))]


# A chunk's lines with their examples, and which of them this rank writes -> each example's
# candidate scores (None where this rank needs none)
ChunkScorer = Callable[[list[tuple[CandidateLine, Example]], list[bool]], list[list[float] | None]]


def trained_scorer(config: Config, env: DistEnv, paths: RunPaths) -> ChunkScorer:
    """The trained selector S: every rank scores a share of the chunk's batches, all-gathered."""
    cfg = config.selector
    tokenizer = selector_tokenizer(config, paths)
    selector = Selector.load(paths.selector, map_location=env.device)
    if selector.features != cfg.features:  # the config says what the features read (MBR's settings)
        features = f"[{','.join(selector.features)}]"
        raise ValueError(f"{paths.selector}: S was trained with the features {features}, but selector.features is "
                         f"[{','.join(cfg.features)}]: set selector.features={features} (with the selector.mbr_* "
                         f"settings it was trained with)")
    pair = pair_encoder(selector, tokenizer, cfg.max_len)

    def score(chunk: list[tuple[CandidateLine, Example]], mine: list[bool]) -> list[list[float] | None]:
        # the features the selector was trained with, with the run's mbr_* settings
        features = ([row for line, _ in chunk
                     for row in candidate_features(line, selector.features, cfg, config.data.bleu_tokenize)]
                    if selector.features else None)
        flat = score_pairs(selector, [pair(ex.source, c) for line, ex in chunk for c in line.pool],
                           tokenizer.pad_id, env, cfg.max_tokens, features)
        starts = list(accumulate((len(line.pool) for line, _ in chunk), initial=0))
        return [flat[a:b] for a, b in zip(starts, starts[1:])]
    return score


def mbr_scorer(config: Config) -> ChunkScorer:
    """Minimum Bayes risk (with the no-memory baseline's opinion, where it weighs), no model:
    each rank scores its own examples, nothing is gathered."""
    cfg = config.selector

    def score(chunk: list[tuple[CandidateLine, Example]], mine: list[bool]) -> list[list[float] | None]:
        return [with_no_memory_opinion(line, line_mbr_scores(line, cfg, config.data.bleu_tokenize),
                                       cfg.no_memory_weight) if wanted else None
                for (line, _), wanted in zip(chunk, mine)]
    return score


# the keys of the retrieved memory, MBR's anchor, and the settings a round chooses among on dev
RETRIEVED = ("mbr_retrieved_weight", "mbr_retrieved_hits")
WEIGHT_CHOICES = "mbr_retrieved_weight_choices"
TEMPERATURE_CHOICES = "mbr_temperature_choices"
NO_MEMORY_WEIGHT, NO_MEMORY_CHOICES = "no_memory_weight", "no_memory_weight_choices"


def weight_options(cfg: SelectorConfig, key: str) -> list[float]:
    """The values MBR's selection may give the weight ``key`` (``mbr_retrieved_weight``, the
    retrieved memory's, or ``no_memory_weight``, the no-memory baseline's opinion's): the one
    set, or (null) its choices (``KEY_choices``), among which each round's dev decides."""
    value = getattr(cfg, key)
    return list(getattr(cfg, f"{key}_choices")) if value is None else [value]


def reads_no_memory(cfg: SelectorConfig) -> bool:
    """Whether the rounds read the no-memory baseline's scores of their candidates."""
    return cfg.kind == "mbr" and max(weight_options(cfg, NO_MEMORY_WEIGHT), default=0.0) > 0


def no_memory_keys(cfg: SelectorConfig) -> tuple[str, ...]:
    """The selector keys of the no-memory opinion that the rounds read (for their fingerprint)."""
    if not reads_no_memory(cfg):
        return ()
    return (NO_MEMORY_WEIGHT, *((NO_MEMORY_CHOICES,) if cfg.no_memory_weight is None else ()))


def chooses_on_dev(cfg: SelectorConfig) -> bool:
    """Whether each round chooses some of MBR's settings on its dev candidates."""
    return cfg.kind == "mbr" and (cfg.mbr_retrieved_weight is None or cfg.no_memory_weight is None)


def chooses_temperature(cfg: SelectorConfig) -> bool:
    """Whether each round chooses MBR's temperature on dev, with the retrieved memory's weight."""
    return (cfg.kind == "mbr" and cfg.mbr_retrieved_weight is None and cfg.mbr_references == "candidates"
            and bool(cfg.mbr_temperature_choices))


def dev_choices(cfg: SelectorConfig, temperatures: bool = True) -> list[tuple[float | None, float, float]]:
    """The (temperature, retrieved memory's weight, no-memory opinion's weight) triples a round
    chooses among on dev, in order (the first of ties wins); the temperature only where
    ``temperatures`` (the candidates have the generator's scores)."""
    chosen = chooses_temperature(cfg) and temperatures
    return [(t, w, v) for t in (list(cfg.mbr_temperature_choices) if chosen else [cfg.mbr_temperature])
            for w in weight_options(cfg, "mbr_retrieved_weight") for v in weight_options(cfg, NO_MEMORY_WEIGHT)]


def reads_retrieved(cfg: SelectorConfig, training: bool = False) -> bool:
    """Whether these settings read the retrieved memory (MBR's anchor, where it weighs): in
    the rounds, or (``training``) in S's training, through its MBR feature only."""
    if cfg.kind == "mbr" and not training:
        return max(weight_options(cfg, "mbr_retrieved_weight"), default=0.0) > 0
    return "mbr" in cfg.features and (cfg.mbr_retrieved_weight or 0.0) > 0


def retrieved_keys(cfg: SelectorConfig) -> tuple[str, ...]:
    """The selector keys of the retrieved memory that the rounds read (for their fingerprint):
    none where it weighs nothing, the choices where dev chooses the weight."""
    if not reads_retrieved(cfg):
        return ()
    return (*RETRIEVED, *((WEIGHT_CHOICES,) if cfg.kind == "mbr" and cfg.mbr_retrieved_weight is None else ()))


def temperature_keys(cfg: SelectorConfig) -> tuple[str, ...]:
    """The temperature choices, where the rounds read them (for their fingerprint)."""
    return (TEMPERATURE_CHOICES,) if chooses_temperature(cfg) else ()


def _valid_weight(weight: float) -> bool:
    return weight >= 0 and weight != float("inf")  # NaN fails the first test


def _check_weights(cfg: SelectorConfig, key: str, zero: str, needs_choices: bool) -> None:
    """A weight setting and its ``_choices``: finite weights of 0 or more (0 means ``zero``),
    and some choices where it is null and dev would choose it (``needs_choices``)."""
    weight, choices = getattr(cfg, key), getattr(cfg, f"{key}_choices")
    if weight is not None and not _valid_weight(weight):
        raise ValueError(f"selector.{key} must be a finite weight of 0 or more (0: {zero}; null: chosen on dev), "
                         f"got {weight}")
    if not all(_valid_weight(w) for w in choices):
        raise ValueError(f"selector.{key}_choices must be finite weights of 0 or more, got {choices}")
    if weight is None and needs_choices and not choices:
        raise ValueError(f"selector.{key} is null, to be chosen on dev among selector.{key}_choices, but there are "
                         f"none: give some, or set the weight")


def check_selector_config(cfg: SelectorConfig) -> None:
    """Refuse selector settings that cannot choose memories as asked, before any work."""
    if cfg.beam < 1:
        raise ValueError(f"selector.beam must be at least 1, got {cfg.beam}")
    unknown = [name for name in cfg.features if name not in FEATURES]
    if unknown or len(set(cfg.features)) != len(cfg.features):
        raise ValueError(f"selector.features must name distinct features among {', '.join(FEATURES)}, "
                         f"got {cfg.features}")
    if cfg.mbr_temperature is not None and cfg.mbr_temperature <= 0:
        raise ValueError(f"selector.mbr_temperature must be positive (or null: every candidate weighs the same), "
                         f"got {cfg.mbr_temperature}")
    _check_weights(cfg, "mbr_retrieved_weight", "the consensus alone", needs_choices=cfg.kind == "mbr")
    _check_weights(cfg, "no_memory_weight", "off", needs_choices=True)
    if not all(t is None or t > 0 for t in cfg.mbr_temperature_choices):
        raise ValueError(f"selector.mbr_temperature_choices must be positive temperatures (or null: every candidate "
                         f"weighs the same), got {cfg.mbr_temperature_choices}")
    if chooses_temperature(cfg) and cfg.mbr_temperature is not None:
        raise ValueError(f"selector.mbr_temperature is {cfg.mbr_temperature:g}, but with selector.mbr_retrieved_weight "
                         f"null each round chooses it on dev among selector.mbr_temperature_choices: set "
                         f"selector.mbr_temperature_choices=[] to keep {cfg.mbr_temperature:g}")
    if cfg.kind != "mbr" and cfg.no_memory_weight != 0:
        raise ValueError("selector.no_memory_weight adds the no-memory baseline's opinion to MBR's score; it needs "
                         "selector.kind mbr (or the weight 0)")
    if cfg.kind == "trained" and "mbr" in cfg.features and cfg.mbr_retrieved_weight is None:
        raise ValueError("S's feature 'mbr' weighs the retrieved memory the same in its training and in the rounds: "
                         "set selector.mbr_retrieved_weight to a number (0: the consensus alone), not null")
    if cfg.mbr_retrieved_hits < 1:
        raise ValueError(f"selector.mbr_retrieved_hits must be at least 1 (the top BM25 hits MBR weighs), "
                         f"got {cfg.mbr_retrieved_hits}")
    if cfg.mbr_references == "samples" and cfg.kind != "mbr":
        raise ValueError("selector.mbr_references samples gives minimum Bayes risk its pseudo-references; "
                         "it needs selector.kind mbr")
    if cfg.mbr_references == "samples" and cfg.mbr_temperature is not None:
        raise ValueError("selector.mbr_temperature weighs the candidates as pseudo-references; samples "
                         "(selector.mbr_references samples) are draws from the generator and weigh the same: "
                         "leave selector.mbr_temperature null")
    if cfg.mode == "augment" and cfg.beam > 1:
        raise ValueError(f"selector.mode augment appends the selector's one top pick to each example's memory "
                         f"list, so selector.beam (B = {cfg.beam}, the memories kept per example) must be 1; "
                         f"keep B memories with selector.mode replace")
    if cfg.mode == "augment" and cfg.keep_retrieved and cfg.max_memories < 2:
        raise ValueError(f"selector.mode augment adds each round's pick to a list of at most selector.max_memories "
                         f"({cfg.max_memories}) memories, which must hold a self memory beside the retrieved one "
                         f"(selector.keep_retrieved): set it to 2 or more")


def augmented_list(line: CandidateLine) -> list[str]:
    """The one memory list that augment mode grows (its candidates were decoded with it)."""
    inputs = text_lists(line.where, line.record, "memories")
    if len(inputs) != 1:
        raise DataError(f"{line.where}: selector.mode augment grows one memory list per example, but "
                        f"\"memories\" holds {len(inputs)} memory inputs (a top-B file of selector.mode "
                        f"replace?): decode from a memory file of one list per example")
    return inputs[0]


def selection_lines(config: Config, paths: RunPaths, split: str, round_k: int, path: Path,
                    num_examples: int) -> Iterator[CandidateLine]:
    """A candidates file's lines, with round K's samples and, where MBR weighs them, the retrieved
    memory (its anchor, whatever memory later rounds decode from) and the no-memory baseline's
    scores (``prepare_no_memory_scores`` writes them)."""
    cfg = config.selector
    if reads_retrieved(cfg) and not paths.bm25_memory(split).exists():
        raise DataError(f"{paths.bm25_memory(split)}: file not found; MBR weighs the retrieved memory beside the "
                        f"candidates (selector.mbr_retrieved_weight {_weight_text(cfg)}) and reads it there: "
                        f"run launch/retrieve.py first, or set selector.mbr_retrieved_weight=0")
    samples = paths.samples(round_k, split) if cfg.mbr_references == "samples" else None
    retrieved = iter_retrieved(config, paths, split, num_examples) if reads_retrieved(cfg) else None
    opinions = paths.no_memory_scores(round_k, split) if reads_no_memory(cfg) else None
    return iter_candidates(path, num_examples, split, samples, retrieved, opinions)


def prepare_no_memory_scores(config: Config, env: DistEnv, paths: RunPaths, split: str, round_k: int,
                             path: Path) -> None:
    """Where MBR weighs it, the no-memory baseline's score of each candidate in ``path``, into
    round K's no-memory scores file (kept where it holds these candidates' scores)."""
    if reads_no_memory(config.selector):
        ensure_no_memory_scores(config, env, paths, split, path, paths.no_memory_scores(round_k, split))


def _weight_text(cfg: SelectorConfig) -> str:
    if cfg.mbr_retrieved_weight is None:
        return f"null: chosen on dev among {', '.join(f'{w:g}' for w in cfg.mbr_retrieved_weight_choices)}"
    return f"{cfg.mbr_retrieved_weight:g}"


def describe_choices(choices: list[tuple[float | None, float, float]], scores: list[float]) -> str:
    """The best of the (T, W, V) ``choices`` by ``scores`` (the first of ties), then the best
    under each value of each setting that has several: what each one is worth, in one line."""
    def best_of(ks) -> str:
        k = max(ks, key=lambda k: (scores[k], -k))
        t, w, v = choices[k]
        return f"{scores[k]:.2f} (W {w:g}, T {'null' if t is None else f'{t:g}'}, V {v:g})"

    under = [f"{name} {'null' if value is None else f'{value:g}'}: "
             + best_of([k for k, c in enumerate(choices) if c[i] == value])
             for i, name in enumerate("TWV")
             if len(values := list(dict.fromkeys(c[i] for c in choices))) > 1 for value in values]
    return best_of(range(len(choices))) + ("; the best under each setting: " + "; ".join(under) if under else "")


def chosen_on_dev(config: Config, env: DistEnv, paths: RunPaths, round_k: int,
                  dev_candidates: Path | None = None) -> Config:
    """``config`` with MBR's settings fixed: where the retrieved memory's weight or the no-memory
    opinion's is null (``selector.kind`` mbr), the triple of ``dev_choices`` whose picks of
    round K's dev candidates score best against dev's references by the data's metric (ties:
    the first), the same on every rank. Test steers nothing."""
    cfg = config.selector
    if not chooses_on_dev(cfg):
        return config
    check_selector_config(cfg)
    path = dev_candidates or paths.candidates(round_k, "dev")
    if not agreed(path.exists):  # rank 0's answer: every rank then raises, or none
        chosen = {"mbr_retrieved_weight": "the retrieved memory's weight", "no_memory_weight": "the no-memory weight"}
        null = [key for key in chosen if getattr(cfg, key) is None]
        keys = " and ".join(f"selector.{key}" for key in null)
        verb = "chooses" if len(null) == 1 else "choose"
        raise DataError(f"{path}: file not found; {keys} null {verb} {' and '.join(chosen[k] for k in null)} on "
                        f"round {round_k}'s dev candidates: decode them first (launch/generate.py --split dev --mode "
                        f"candidates --round {round_k}), or set {keys}")
    prepare_no_memory_scores(config, env, paths, "dev", round_k, path)
    examples = load_split(config.data, "dev")
    # one read: every line checked (a bad one fails at once), this rank's examples' kept
    lines, scored = {}, True
    for i, line in enumerate(selection_lines(config, paths, "dev", round_k, path, len(examples))):
        scored &= line.pool_scores is not None
        if env.owns(i):
            lines[i] = line
    # candidates without the generator's scores (a hand-made file) leave the temperature null: all alike
    choices = dev_choices(cfg, temperatures=scored)
    mbr_settings = list(dict.fromkeys((t, w) for t, w, _ in choices))

    def picks_of(line: CandidateLine) -> list[str]:  # the line's pick under each choice
        mbr = dict(zip(mbr_settings, line_mbr_score_sets(line, cfg, config.data.bleu_tokenize, mbr_settings)))
        return [top_b(line.pool, with_no_memory_opinion(line, mbr[t, w], v), 1)[0] for t, w, v in choices]

    mine = {i: picks_of(line) for i, line in lines.items()}
    picks = in_order(all_gather(mine), len(examples))
    references = [ex.target for ex in examples]
    scores = [headline_score(config.data.metric, [texts[k] for texts in picks], references,
                             config.data.bleu_tokenize) for k in range(len(choices))]
    best = max(range(len(choices)), key=lambda k: (scores[k], -k))
    temperature, weight, opinion = choices[best]
    log.info("round %d: chosen on dev (W selector.mbr_retrieved_weight, T mbr_temperature, V no_memory_weight): "
             "%s %s", round_k, config.data.metric, describe_choices(choices, scores))
    return dataclasses.replace(config, selector=dataclasses.replace(
        cfg, mbr_retrieved_weight=weight, mbr_temperature=temperature, no_memory_weight=opinion))


def generator_scores_wanted_by(cfg: SelectorConfig) -> str | None:
    """The setting that reads the generator's score of each candidate, or None: a trained S
    with the feature 'generator', or MBR (the selector or S's feature) weighted by them."""
    if cfg.kind == "trained" and "generator" in cfg.features:
        return "the selector feature 'generator'"
    if cfg.mbr_temperature is not None and (cfg.kind == "mbr" or "mbr" in cfg.features):
        return "selector.mbr_temperature"
    return None


def select_memories(config: Config, env: DistEnv, paths: RunPaths, split: str, round_k: int,
                    candidates_path: Path | None = None, chunk_examples: int = CHUNK_EXAMPLES) -> list[str] | None:
    """Choose the next memories of ``split`` from round K's candidates into round K's memory
    file; returns the selector's top pick of each example on rank 0 (None on the others). A
    null ``selector.mbr_retrieved_weight`` or ``no_memory_weight`` is chosen on round K's dev
    candidates first, with the temperature (``chosen_on_dev``; ``candidates_path`` where it
    holds them)."""
    config = chosen_on_dev(config, env, paths, round_k, candidates_path if split == "dev" else None)
    cfg = config.selector
    check_selector_config(cfg)
    path = candidates_path or paths.candidates(round_k, split)
    prepare_no_memory_scores(config, env, paths, split, round_k, path)
    num_examples = sum(1 for _ in iter_split(config.data, split))

    def candidate_lines() -> Iterator[CandidateLine]:
        return selection_lines(config, paths, split, round_k, path, num_examples)

    scores_wanted_by = generator_scores_wanted_by(cfg)
    for line in candidate_lines():  # all of it before any model: a bad line fails at once
        if cfg.mode == "augment":
            augmented_list(line)
        if scores_wanted_by is not None:
            require_generator_scores(line, scores_wanted_by)
    score = trained_scorer(config, env, paths) if cfg.kind == "trained" else mbr_scorer(config)
    picks: dict[int, str] = {}  # this rank's examples' top picks

    # augment keeps the retrieved memory at the head of a list, where there is one: an example
    # without a BM25 hit started from an empty list, so its head is its oldest self-memory
    retrieved_heads = (bool(hits) for hits in bm25_hits(paths, split, num_examples)) \
        if cfg.mode == "augment" and cfg.keep_retrieved and paths.bm25_memory(split).exists() else repeat(True)

    def memory_lines() -> Iterator[tuple[int, str]]:
        """This rank's examples' memory lines, in order: a chunk of examples at a time (every
        world_size-th example each), whose candidates are scored together."""
        lines = zip(candidate_lines(), iter_split(config.data, split))
        first = 0
        while chunk := list(islice(lines, chunk_examples)):
            indices = range(first, first + len(chunk))
            # every example's candidates over all of its memory inputs compete together
            scores = score(chunk, [env.owns(i) for i in indices])
            heads = list(islice(retrieved_heads, len(chunk)))
            for i, (line, _), line_scores, retrieved_head in zip(indices, chunk, scores, heads):
                if not env.owns(i):
                    continue
                best = top_b(line.pool, line_scores, cfg.beam)
                picks[i] = best[0]
                keep = cfg.keep_retrieved and retrieved_head
                memories = ([augment(augmented_list(line), best[0], cfg.max_memories, keep)]
                            if cfg.mode == "augment" else [[m] for m in best])
                yield i, json_line({"memories": memories})
            first += len(chunk)

    output = paths.round_memory(round_k, split)
    shards = shard_paths(output, env.world_size)
    write_shard(shards[env.rank], memory_lines())
    barrier()
    on_main(lambda: merge_shards(shards, output, num_examples))
    log.info("%s: %d memories chosen (%s, B = %d) -> %s", split, num_examples, cfg.mode, cfg.beam, output)
    gathered = gather_to_main(picks)
    if gathered is None:
        return None
    return in_order(gathered, num_examples)
