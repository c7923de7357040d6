"""The no-memory baseline's opinion of the candidates, a second opinion for MBR's pick.

G ranks and proposes candidates with its memory in view, and from the second round on its
candidates gather around that memory, so MBR's consensus favours a candidate for copying it.
The lift's baseline without memory (``lift.no_memory_baseline``, in ``no_memory/generator``)
reads the source alone: its length-normalised log-probability of a candidate (the sum over its
tokens and eos, divided by their number), times ``selector.no_memory_weight``, is added to
MBR's score (docs/results.md).

Written like the decodings: rank r scores every world_size-th example into its shard and rank
0 merges them into ``round_K/no_memory_scores/{split}.jsonl``, one line per example,
``{"candidates_sha1": ..., "scores": [[...], ...]}``, the scores shaped like the candidates
file's ``"candidates"`` and the digest that of its candidates, checked where they are read.
An example's candidates are scored as one batch of their distinct texts, so a score depends
on the example alone, never on the rank or the number of ranks; and a scoring that was
interrupted goes on from the lines it had finished (``selfmem/common/shards.py``), each
kept only if its digest is that of its candidates now.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path

import torch
from tqdm import tqdm

from selfmem.common.config import Config, baseline_config
from selfmem.common.data import Example, load_split
from selfmem.common.distributed import DistEnv, agreed, all_gather, on_main
from selfmem.common.generator_inputs import SpecialIds, collate, encode_examples
from selfmem.common.io import json_line
from selfmem.common.records import DataError, iter_aligned, numbers_shaped_like, text_lists
from selfmem.common.run import RunPaths
from selfmem.common.shards import kept_lines, merge_shards, progress_log, shard_paths, write_shard
from selfmem.common.tokenizer import load_tokenizer
from selfmem.infer.generate import load_generator

log = logging.getLogger(__name__)


def candidates_digest(candidates: list[list[str]]) -> str:
    """A line's candidates (over its memory inputs) as a short digest: which scores are whose."""
    return hashlib.sha1(json.dumps(candidates, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


@torch.no_grad()
def candidate_log_probs(model: torch.nn.Module, example: Example, texts: list[str], tokenizer, config: Config,
                        ids: SpecialIds, device: torch.device) -> list[float]:
    """The length-normalised log-probability of each of ``texts`` as ``example``'s target under
    ``model``, a generator without memory, in one batch."""
    encoded = encode_examples([dataclasses.replace(example, target=t) for t in texts], [[]] * len(texts),
                              tokenizer, config.generator)  # no memories: the source alone
    batch = collate(encoded, "none", ids)
    labels = batch["labels"].to(device)
    real = labels.ne(ids.pad)
    positions = real.flatten().nonzero().squeeze(1)  # the output projection skips the padding
    # every row's source is the example's: one row, encoded once and read by every candidate
    logits = model(batch["src"][:1].to(device), batch["decoder_input"].to(device), target_rows=positions)
    token_log_probs = torch.log_softmax(logits.float(), dim=-1).gather(1, labels.flatten()[positions, None]).squeeze(1)
    sums = token_log_probs.new_zeros(len(texts)).index_add_(0, positions // labels.size(1), token_log_probs)
    return (sums / real.sum(1)).tolist()


def score_without_memory(config: Config, env: DistEnv, paths: RunPaths, split: str, candidates_path: Path,
                         output: Path) -> None:
    """Write the no-memory baseline's score of every candidate of ``candidates_path`` to ``output``."""
    baseline_paths = paths.no_memory_baseline()
    if not agreed(lambda: (baseline_paths.generator / "config.json").exists()):
        raise DataError(f"{baseline_paths.generator}: no generator without memory; selector.no_memory_weight asks "
                        f"for its opinion of the candidates: train it with lift.no_memory_baseline=true, or set "
                        f"selector.no_memory_weight=0")
    examples = load_split(config.data, split)
    tokenizer = load_tokenizer(paths.tokenizer)
    baseline = baseline_config(config)
    model = load_generator(baseline, baseline_paths, env.device, tokenizer)
    ids = SpecialIds.of(tokenizer, model)

    kept = kept_lines(output, env.owns)  # an interrupted attempt's lines, each checked against its candidates
    reused = 0

    def lines(log_progress) -> Iterator[tuple[int, str]]:
        nonlocal reused
        records = iter_aligned(candidates_path, len(examples), split)
        bar = tqdm(total=len(examples), desc=f"no-memory scores {split}", unit="ex", disable=not env.is_main)
        for i, (where, record) in enumerate(records):
            bar.update(1)
            if not env.owns(i):
                continue
            candidates = text_lists(where, record, "candidates")
            digest = candidates_digest(candidates)
            if i in kept and json.loads(kept[i]).get("candidates_sha1") == digest:
                reused += 1
                yield i, kept[i]
                continue
            distinct = list(dict.fromkeys(c for per_input in candidates for c in per_input))
            score = dict(zip(distinct, candidate_log_probs(model, examples[i], distinct, tokenizer, baseline, ids,
                                                           env.device)))
            line = json_line({"candidates_sha1": digest,
                              "scores": [[round(score[c], 4) for c in per_input] for per_input in candidates]})
            log_progress([(i, line)])
            yield i, line
        bar.close()

    shards = shard_paths(output, env.world_size)
    with progress_log(output, env.rank) as log_progress:
        write_shard(shards[env.rank], lines(log_progress))
    total_reused = sum(all_gather(reused))  # once every rank has written its shard
    on_main(lambda: merge_shards(shards, output, len(examples)))
    kept_note = f" ({total_reused} kept from an interrupted attempt)" if total_reused else ""
    log.info("no-memory scores %s: %d examples%s -> %s", split, len(examples), kept_note, output)


def holds_scores_of(output: Path, candidates_path: Path) -> bool:
    """Whether ``output`` holds a scores line for each line of ``candidates_path``, in order, each
    with the digest of that line's candidates (a file's age says nothing: a scores file may be
    another candidates file's, one decoded again since, or one read by a stand-alone script)."""
    if not output.exists():
        return False
    with output.open(encoding="utf-8") as scores, candidates_path.open(encoding="utf-8") as candidates:
        for score_line, candidates_line in zip_longest(scores, candidates):
            if score_line is None or candidates_line is None:
                return False
            try:
                digest = json.loads(score_line).get("candidates_sha1")
                texts = json.loads(candidates_line).get("candidates")
            except (json.JSONDecodeError, AttributeError):
                return False
            if not isinstance(texts, list) or digest != candidates_digest(texts):
                return False
    return True


def ensure_no_memory_scores(config: Config, env: DistEnv, paths: RunPaths, split: str, candidates_path: Path,
                            output: Path) -> None:
    """Score the candidates without memory unless ``output`` holds their scores already (a
    round resumed, or dev's scores read twice)."""
    if not agreed(lambda: holds_scores_of(output, candidates_path)):
        score_without_memory(config, env, paths, split, candidates_path, output)


def parse_no_memory_scores(where: str, record: dict, candidates: list[list[str]],
                           candidates_where: str) -> list[float]:
    """A scores line's scores flattened like its candidates, refused if they are another file's."""
    if record.get("candidates_sha1") != candidates_digest(candidates):
        raise DataError(f"{where}: these no-memory scores are not of the candidates of {candidates_where} (another "
                        f"decoding of them?): delete the file to score them again")
    scores = record.get("scores")
    if not numbers_shaped_like(scores, candidates):
        raise DataError(f"{where}: \"scores\" must be a list of lists of numbers shaped like the candidates of "
                        f"{candidates_where}")
    return [float(x) for s in scores for x in s]
