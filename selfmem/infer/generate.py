"""Distributed generation: candidates (many beams, many returned), samples (epsilon sampling,
MBR's pseudo-references) or hypotheses of a split.

An example may come with several memory inputs (the top-B memories of a later round);
candidates and samples decode it once per memory input, hypotheses with its first (top) memory
input. A sample's randomness comes from its example's index and memory input alone. Examples,
with all of their memory inputs, are packed
into length-sorted token-budget batches that depend only on the data and the settings, cut
into streams of ``candidates.stream_batches`` batches, and rank r decodes every
world_size-th stream, so the output is the same for any number of ranks. Each rank writes its examples' finished lines to its shard; rank 0 merges the shards in
dataset order, streaming (``selfmem/common/shards.py``).

Memory files: a line's ``"memories"`` is either a ranked list of strings (retrieval: the
first ``num_memories`` form the one memory input, as in training) or a list of memory
inputs, each a list of strings (one input per kept memory, or an augmented list).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from selfmem.common.batching import token_budget_batches
from selfmem.common.config import Config
from selfmem.common.data import load_split
from selfmem.common.distributed import DistEnv, all_gather, on_main
from selfmem.common.generator_inputs import (
    SpecialIds,
    collate,
    encode_examples,
    encoder_input,
    memory_inputs,
)
from selfmem.common.io import json_line, one_line, read_lines
from selfmem.common.metrics import headline_score
from selfmem.common.records import CheckpointError, memory_sets, read_aligned
from selfmem.common.run import RunPaths
from selfmem.common.shards import drop_parts, kept_lines, merge_shards, progress_log, shard_paths, write_shard
from selfmem.common.tokenizer import Tokenizer, load_tokenizer
from selfmem.infer.beam import BeamSettings, Hypothesis, beam_search
from selfmem.infer.hf_beam import hf_beam_search
from selfmem.infer.sampling import SampleSettings, epsilon_sample
from selfmem.models.budgets import check_length_budgets
from selfmem.models.hf_engine import HFSeq2Seq
from selfmem.models.seq2seq import Seq2SeqModel
from selfmem.models.vocabulary import check_native_tokenizer

log = logging.getLogger(__name__)

MODES = ("candidates", "samples", "hypotheses")
SAMPLING = ("num_samples", "epsilon")  # the candidates keys only --mode samples reads


def decode_settings(config: Config, mode: str) -> BeamSettings | SampleSettings:
    """The candidates config as decoding settings: many beams, all returned (candidates), epsilon
    sampling (samples), or a few beams, one returned (hypotheses)."""
    c = config.candidates
    max_len = min(c.max_len, config.generator.max_target_len)
    if mode == "samples":
        return SampleSettings(num_samples=c.num_samples, epsilon=c.epsilon, min_len=c.min_len, max_len=max_len)
    beams, returned = (c.num_beams, c.num_return) if mode == "candidates" else (c.hypothesis_beams, 1)
    return BeamSettings(num_beams=beams, num_return=returned, length_penalty=c.length_penalty, min_len=c.min_len,
                        max_len=max_len, no_repeat_ngram=c.no_repeat_ngram,
                        early_stopping=c.early_stopping)


def check_engine_decodes(config: Config, mode: str) -> None:
    """Refuse a decoding mode the generator's engine cannot run as this project needs."""
    if mode == "samples" and config.generator.engine != "native":
        raise ValueError("sampling (launch/generate.py --mode samples, and selector.mbr_references samples) needs "
                         "generator.engine native: HF generate's sampling is not rank-invariant")


def load_generator(config: Config, paths: RunPaths, device: torch.device, tokenizer: Tokenizer) -> torch.nn.Module:
    """The run's trained generator, in eval mode on ``device``, refused if ``tokenizer`` (the
    run's) is not the one it was trained with."""
    if not (paths.generator / "config.json").exists():
        raise CheckpointError(f"{paths.generator}: no trained generator; run launch/train_generator.py first")
    check_length_budgets(config, paths.generator)
    what = f"{paths.generator} read with the tokenizer in {paths.tokenizer}"
    if config.generator.engine == "hf":
        model = HFSeq2Seq(paths.generator, tokenizer.pad_id)
        model.check_tokenizer(tokenizer, what)
        return model.to(device).eval()
    model = Seq2SeqModel.load(paths.generator, map_location=device)
    check_native_tokenizer(tokenizer, model.config, what)
    return model


@dataclass(frozen=True)
class Unit:
    """One decoding: example ``example`` with its memory input number ``slot``."""

    example: int
    slot: int


class Generator:
    """Decodes batches of work units with the native beam search or sampler, or HF ``generate``."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: Config,
                 settings: BeamSettings | SampleSettings):
        self.model, self.settings = model, settings
        self.memory_mode = config.generator.memory
        self.ids = SpecialIds.of(tokenizer, model)

    def decode(self, encoded: list, examples: list[int], device: torch.device,
               seeds: list[int] | None = None, max_inputs: int | None = None) -> list[list[Hypothesis]]:
        """The hypotheses (or samples) of each encoded input; ``examples`` says which example
        each one is, ``seeds`` (sampling only) what each one's draws come from. With
        ``max_inputs`` (the native beam search), at most that many inputs decode at a time,
        the next entering as one is done.

        With dual memory an example's source is encoded once for all of its memory inputs.
        """
        tensors = collate(encoded, self.memory_mode, self.ids)
        src = tensors["src"].to(device)
        if isinstance(self.model, HFSeq2Seq):
            return hf_beam_search(self.model.hf, src, self.settings, self.ids.decoder_start, self.ids.eos,
                                  self.ids.pad)
        search = functools.partial(beam_search, max_examples=max_inputs)
        if isinstance(self.settings, SampleSettings):
            search = functools.partial(epsilon_sample, seeds=torch.tensor(seeds, dtype=torch.long))
        if self.memory_mode != "dual":
            return search(self.model, src, None, self.settings, self.ids.decoder_start, self.ids.eos)
        first: dict[int, int] = {}  # example -> its first input
        for i, example in enumerate(examples):
            first.setdefault(example, i)
        position = {example: p for p, example in enumerate(first)}
        source_index = torch.tensor([position[e] for e in examples], device=device)
        return search(self.model, src[list(first.values())], tensors["memory"].to(device), self.settings,
                      self.ids.decoder_start, self.ids.eos, source_index=source_index)


def sample_seed(run_seed: int, example: int, slot: int) -> int:
    """The seed of one decoding's samples: the run's seed, the example's index in its split and
    its memory input (never the batch or the rank, so that samples do not depend on them)."""
    return (run_seed * 1_000_003 + example) * 1024 + slot


def decoding_path(paths: RunPaths, mode: str, round_k: int, split: str) -> Path:
    """Where round K's decodings of ``split`` in ``mode`` go."""
    return {"candidates": paths.candidates, "samples": paths.samples, "hypotheses": paths.hyps}[mode](round_k, split)


def generate(config: Config, env: DistEnv, paths: RunPaths, split: str, mode: str, memory_path: Path | None,
             round_k: int, subset: list[int] | None = None, output: Path | None = None,
             resume: bool = False) -> Path:
    """Decode ``split`` with the memories in ``memory_path`` (None: the run's BM25 memory) and
    write ``round_K/candidates/{split}.jsonl``, ``round_K/samples/{split}.jsonl`` or
    ``round_K/hyps/{split}.txt``; returns that path.

    ``subset`` decodes only those examples of the split (in that order) into ``output``.
    ``resume`` keeps what an interrupted call left (the lift's rounds, whose fingerprints
    say that the inputs are the same); otherwise it is removed first.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if output is None:
        output = decoding_path(paths, mode, round_k, split)
    started = time.perf_counter()
    if not resume:
        on_main(lambda: drop_parts(output))
    shards = shard_paths(output, env.world_size)
    num_examples, num_decodings, reused = decode_share(config, env, paths, split, mode, memory_path, subset,
                                                       output, shards[env.rank])
    reused = sum(all_gather(reused))  # once every rank has written its shard

    def merge() -> None:
        if reused:
            log.info("%s %s: %d examples' lines kept from an interrupted attempt", mode, split, reused)
        merge_shards(shards, output, num_examples)
        log.info("%s %s: %d examples, %d decodings in %.1f s -> %s", mode, split, num_examples, num_decodings,
                 time.perf_counter() - started, output)
        if mode == "hypotheses":
            examples = load_split(config.data, split)
            targets = [examples[i].target for i in (range(len(examples)) if subset is None else subset)]
            score = headline_score(config.data.metric, read_lines(output), targets, config.data.bleu_tokenize)
            log.info("%s hypotheses: %s %.2f", split, config.data.metric, score)

    on_main(merge)
    return output


def decode_share(config: Config, env: DistEnv, paths: RunPaths, split: str, mode: str, memory_path: Path | None,
                 subset: list[int] | None, output: Path, shard: Path) -> tuple[int, int, int]:
    """Decode this rank's batches of ``split`` and write their output lines to ``shard``;
    returns the numbers of examples and of decodings of the whole split (or subset), and of
    this rank's examples whose lines were kept from an earlier attempt.

    Every rank reads the split and its memories to size the batches; it keeps only its own
    examples' finished lines, and all of it is freed before rank 0 merges the shards. Each
    stream's lines also go to a part file of ``output`` as it ends; a stream whose every line
    an earlier attempt left there is not decoded again (one left in part is: its lines may
    depend on the batch).
    """
    gcfg = config.generator
    settings = decode_settings(config, mode)
    check_engine_decodes(config, mode)
    examples = load_split(config.data, split)
    if gcfg.memory == "none":
        sets = [[[]] for _ in examples]
    else:  # read before the model: a bad memory file fails at once
        records = read_aligned(memory_path or paths.bm25_memory(split), len(examples), split)
        sets = [memory_sets(where, r, gcfg.num_memories) for where, r in records]
        if mode == "hypotheses":
            sets = [s[:1] for s in sets]  # the top memory
    tokenizer = load_tokenizer(paths.tokenizer)
    model = load_generator(config, paths, env.device, tokenizer)
    generator = Generator(model, tokenizer, config, settings)
    index = list(range(len(examples))) if subset is None else subset  # each decoded example's place in the split
    if subset is not None:
        examples, sets = [examples[i] for i in subset], [sets[i] for i in subset]
    units = [Unit(i, s) for i, example_sets in enumerate(sets) for s in range(len(example_sets))]
    encoded = encode_examples([examples[u.example] for u in units], [sets[u.example][u.slot] for u in units],
                              tokenizer, gcfg)
    units_of: list[list[int]] = [[] for _ in examples]
    for u, unit in enumerate(units):
        units_of[unit.example].append(u)
    width = settings.num_samples if mode == "samples" else settings.num_beams
    sizes = [(sum(width * input_size(encoded[u], gcfg.memory, generator.ids) for u in example_units),)
             for example_units in units_of]
    # whole examples per batch (a dual-memory source is encoded once for all its memories)
    batches = token_budget_batches(sizes, config.candidates.max_tokens, seed=0, epoch=0)
    streaming = mode != "samples" and gcfg.engine == "native"  # the native beam search takes streams
    streams = decoding_streams(batches, sizes, config.candidates.stream_batches if streaming else 1)

    mine = env.share(streams)
    mine_examples = {i for stream in mine for batch in stream for i in batch}
    kept = kept_lines(output, mine_examples.__contains__)
    lines: dict[int, str] = {}  # this rank's examples' output lines, until they are written in order
    reused = 0
    bar = tqdm(total=len(mine_examples), desc=f"{mode} {split}", unit="ex", disable=not env.is_main)
    with progress_log(output, env.rank) as log_progress:
        for stream in mine:
            stream_examples = [i for batch in stream for i in batch]
            if all(i in kept for i in stream_examples):
                lines.update((i, kept[i]) for i in stream_examples)
                reused += len(stream_examples)
                bar.update(len(stream_examples))
                continue
            stream_units = [u for i in stream_examples for u in units_of[i]]
            seeds = [sample_seed(config.run.seed, index[units[u].example], units[u].slot) for u in stream_units]
            max_inputs = min(sum(len(units_of[i]) for i in batch) for batch in stream)
            decoded = dict(zip(stream_units, generator.decode([encoded[u] for u in stream_units],
                                                              [units[u].example for u in stream_units],
                                                              env.device, seeds, max_inputs)))
            finished = {i: output_line(mode, sets[i], [decoded[u] for u in units_of[i]], tokenizer)
                        for i in stream_examples}
            log_progress(finished.items())
            lines.update(finished)
            bar.update(len(stream_examples))
    bar.close()
    write_shard(shard, sorted(lines.items()))
    return len(examples), len(units), reused


def decoding_streams(batches: list[list[int]], sizes: list[tuple[int]], per_stream: int) -> list[list[list[int]]]:
    """The batches in groups of ``per_stream`` of similar lengths (by their widest example's
    size), each group decoded as one stream; like the batches, they depend on the data and
    the settings only, so that a rank's share is the same streams at any number of ranks."""
    if per_stream < 1:
        raise ValueError(f"candidates.stream_batches must be at least 1, got {per_stream}")
    by_length = sorted(batches, key=lambda batch: max(sizes[i] for i in batch))
    return [by_length[i:i + per_stream] for i in range(0, len(by_length), per_stream)]


def input_size(example, memory_mode: str, ids: SpecialIds) -> int:
    """Encoder tokens of one input: the encoder input, plus the memories in dual mode."""
    size = len(encoder_input(example, memory_mode, ids))
    return size + sum(map(len, memory_inputs(example, ids))) if memory_mode == "dual" else size


def output_line(mode: str, example_sets: list[list[str]], decoded: list[list[Hypothesis]],
                tokenizer: Tokenizer) -> str:
    """One example's line of the output. Candidates (samples): one candidate (sample) list per
    memory input. Hypotheses: the best hypothesis (of its one memory input)."""
    if mode != "hypotheses":
        return json_line({
            "memories": example_sets,
            mode: [[tokenizer.decode(h.tokens) for h in hyps] for hyps in decoded],
            "scores": [[round(h.score, 4) for h in hyps] for hyps in decoded],
        })
    return one_line(tokenizer.decode(decoded[0][0].tokens) if decoded[0] else "") + "\n"
