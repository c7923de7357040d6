"""The lift loop: every stage of Selfmem in one torchrun job, resumable (see docs/internals.md).

Stages, in order, with a barrier after each: tokenizer -> BM25 memory [-> no-memory
baseline] -> generator -> round 0 (hypotheses with the retrieved memory) -> the selector's
candidates -> the selector -> rounds 1..R. Round k, on dev and test: candidates from the
memories of round k-1 -> the selector's top-B (or augmented list) as round k's memories ->
hypotheses with them -> metrics. The train split only feeds the selector: G is trained
once and then fixed, and S once.

The loop stops after ``lift.max_rounds``, when the dev metric has not risen for
``lift.patience`` rounds, or at a fixed point (no dev example's memory changed). The result
is the test metric of the round that was best on dev: the test split steers nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from selfmem.common.config import Config, baseline_config, baseline_generator
from selfmem.common.data import SPLITS, load_split, split_file
from selfmem.common.digest import file_digest, path_digest
from selfmem.common.distributed import DistEnv, agreed, on_main
from selfmem.common.io import atomic_write_jsonl, read_jsonl, read_lines
from selfmem.common.metrics import headline_score
from selfmem.common.run import NO_MEMORY, RunPaths
from selfmem.common.tokenizer import prepare_run_tokenizer
from selfmem.infer.generate import SAMPLING, check_engine_decodes, decoding_path, generate
from selfmem.lift.report import best_round, write_report
from selfmem.lift.state import RunState
from selfmem.models.budgets import check_length_budgets
from selfmem.models.build import check_model_settings
from selfmem.models.selector import check_selector_backbone
from selfmem.retrieve.memory import build_bm25_memory, initial_memory
from selfmem.select.candidates import baseline_picks, selector_examples, sentence_metric
from selfmem.select.stage import (
    check_selector_config,
    chosen_on_dev,
    no_memory_keys,
    reads_no_memory,
    retrieved_keys,
    select_memories,
    temperature_keys,
)
from selfmem.train.generator import check_copy_epochs, train_generator
from selfmem.train.loop import micro_batches_per_step
from selfmem.train.selector import (
    MBR_ONLY,
    NOT_FOR_SELECTOR,
    SELECTION,
    generate_selector_candidates,
    train_selector,
    unread_by_training,
)

log = logging.getLogger(__name__)

EVAL_SPLITS = ("dev", "test")
# keys that change no result (train.compile and candidates.stream_batches their rounding only):
# they are left out of the fingerprints
BOOKKEEPING = ("save_every", "log_every", "prefetch", "compile", "batch_size", "index_name", "connect_attempts",
               "connect_backoff", "stream_batches")


def _without(section, keys: tuple[str, ...]) -> dict:
    """A config section (a dataclass or its dict) less ``keys``."""
    values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
    return {k: v for k, v in values.items() if k not in keys}


def _score(config: Config, texts: list[str], split: str) -> float:
    references = [ex.target for ex in load_split(config.data, split)]
    return headline_score(config.data.metric, texts, references, config.data.bleu_tokenize)


def _with_selector_candidates(config: Config, k: int, split: str) -> bool:
    """Whether round k's candidates of ``split`` are made by the selector's stage (round 1's
    dev candidates, which a trained selector is evaluated on), not by the round."""
    return config.selector.kind == "trained" and (k, split) == (1, "dev")


def _round_outputs(config: Config, paths: RunPaths, k: int) -> list[Path]:
    outputs = [paths.round_dir(k) / "metrics.jsonl"]
    for split in EVAL_SPLITS:
        outputs += [paths.round_memory(k, split), paths.hyps(k, split)]
        if k > 0 and not _with_selector_candidates(config, k, split):
            outputs.append(paths.candidates(k, split))
        if k > 0 and config.selector.mbr_references == "samples":
            outputs.append(paths.samples(k, split))
        if k > 0 and reads_no_memory(config.selector):
            outputs.append(paths.no_memory_scores(k, split))
    return outputs


def _round_zero(config: Config, env: DistEnv, paths: RunPaths) -> None:
    """The retrieval baseline: hypotheses with the BM25 memory, and round 0's memory files."""
    rows = []
    for split in EVAL_SPLITS:
        initial_memory(config, paths, split)
        generate(config, env, paths, split, "hypotheses", None, 0)
        top_hits = [(r["memories"] or [""])[0] for r in read_jsonl(paths.bm25_memory(split))]
        rows.append(lambda split=split, top_hits=top_hits: {
            "round": 0, "split": split, "hyps": _score(config, read_lines(paths.hyps(0, split)), split),
            "memory": _score(config, top_hits, split), "oracle": None, "top1": None, "changed": None})
    on_main(lambda: atomic_write_jsonl(paths.round_dir(0) / "metrics.jsonl", [row() for row in rows]))


def _decode_once(config: Config, env: DistEnv, paths: RunPaths, split: str, mode: str, memory: Path, k: int) -> None:
    """Round k's decodings of ``split``, unless the round, resumed, wrote them before it stopped
    (or the lines that it finished: a round started afresh removes them first)."""
    output = decoding_path(paths, mode, k, split)
    if agreed(output.exists):
        log.info("%s %s: kept, written before the round was resumed -> %s", mode, split, output)
        return
    generate(config, env, paths, split, mode, memory, k, resume=True)


def _round(config: Config, env: DistEnv, paths: RunPaths, k: int) -> None:
    """Round k >= 1 on dev and test: candidates -> selection -> hypotheses -> metrics. A resumed
    round keeps the decodings it finished (the selection, seconds, is redone: it writes the same)."""
    rows, mbr = [], config.selector.kind == "mbr"
    for split in EVAL_SPLITS:
        if not _with_selector_candidates(config, k, split):
            _decode_once(config, env, paths, split, "candidates", paths.round_memory(k - 1, split), k)
        if config.selector.mbr_references == "samples":  # MBR's pseudo-references, from the same memory
            _decode_once(config, env, paths, split, "samples", paths.round_memory(k - 1, split), k)
        if split == "dev":  # MBR's settings, where dev chooses them: once, for both splits
            config = chosen_on_dev(config, env, paths, k)
        picks = select_memories(config, env, paths, split, k)
        _decode_once(config, env, paths, split, "hypotheses", paths.round_memory(k, split), k)

        def row(split=split, picks=picks) -> dict:
            examples = load_split(config.data, split)
            candidates = baseline_picks(selector_examples(paths.candidates(k, split), examples,
                                                          sentence_metric(config), split))
            before, after = read_jsonl(paths.round_memory(k - 1, split)), read_jsonl(paths.round_memory(k, split))
            return {"round": k, "split": split, "hyps": _score(config, read_lines(paths.hyps(k, split)), split),
                    "memory": _score(config, picks, split), "oracle": _score(config, candidates["oracle"], split),
                    "top1": _score(config, candidates["top1"], split),
                    "changed": sum(a["memories"] != b["memories"] for a, b in zip(before, after)),
                    # MBR's settings (chosen on dev by default; none with the trained S)
                    "retrieved_weight": config.selector.mbr_retrieved_weight if mbr else None,
                    "temperature": config.selector.mbr_temperature if mbr else None,
                    "no_memory_weight": config.selector.no_memory_weight if mbr else None}
        rows.append(row)
    on_main(lambda: atomic_write_jsonl(paths.round_dir(k) / "metrics.jsonl", [row() for row in rows]))


def _no_memory_baseline(config: Config, env: DistEnv, paths: RunPaths) -> None:
    """A generator without memory, trained and decoded like the run's own, in ``no_memory/``."""
    baseline = baseline_config(config)
    baseline_paths = paths.no_memory_baseline()
    train_generator(baseline, env, baseline_paths)
    hyps = {split: paths.hyps(NO_MEMORY, split) for split in EVAL_SPLITS}
    for split, output in hyps.items():
        generate(baseline, env, baseline_paths, split, "hypotheses", None, 0, output=output)
    on_main(lambda: atomic_write_jsonl(paths.round_dir(NO_MEMORY) / "metrics.jsonl", [
        {"round": NO_MEMORY, "split": split, "hyps": _score(config, read_lines(output), split)}
        for split, output in hyps.items()]))


def check_lift_config(config: Config) -> None:
    """Refuse settings under which the loop cannot work, before any stage runs."""
    if config.generator.memory == "none":
        raise ValueError("generator.memory is 'none': a generator without memory has nothing to lift; "
                         "use joint or dual (lift.no_memory_baseline=true adds the no-memory baseline)")
    selector = config.selector
    check_selector_config(selector)
    if selector.mode == "augment" and config.generator.num_memories < selector.max_memories:
        raise ValueError(f"selector.mode augment grows memory lists to selector.max_memories "
                         f"({selector.max_memories}) but the generator reads generator.num_memories "
                         f"({config.generator.num_memories}) of them: set generator.num_memories >= "
                         f"{selector.max_memories} (it also trains on that many retrieved memories)")
    if config.retrieval.topk < max(config.generator.num_memories, selector.beam):
        raise ValueError(f"retrieval.topk ({config.retrieval.topk}) must cover generator.num_memories "
                         f"({config.generator.num_memories}) and selector.beam ({selector.beam})")
    if config.train.max_epochs == 0 and config.generator.init is None:
        raise ValueError("train.max_epochs is 0, which keeps generator.init as it is, but there is none: the "
                         "generator would stay untrained; give train.max_epochs or generator.init")
    check_model_settings(config.generator)
    if selector.kind == "trained":
        check_selector_backbone(config)
    if selector.mbr_references == "samples":
        check_engine_decodes(config, "samples")
    check_length_budgets(config)
    check_copy_epochs(config)  # now, not after the no-memory baseline's hours of training
    if reads_no_memory(selector) and not config.lift.no_memory_baseline:
        raise ValueError("selector.no_memory_weight weighs the no-memory baseline's opinion of the candidates, "
                         "which the lift trains with lift.no_memory_baseline=true: set it, or "
                         "selector.no_memory_weight=0")
    if config.lift.no_memory_baseline:  # a generator without memory, maybe from its own checkpoint
        check_length_budgets(baseline_config(config))  # against its init, where it has one


def lift(config: Config, env: DistEnv, paths: RunPaths, prepare_only: bool = False) -> list[dict]:
    """Run (or resume) every stage; returns the report's rows (also in ``metrics.jsonl``).
    ``prepare_only``: the tokenizer and the BM25 memory only (on a CPU, for a run that goes on
    where a GPU is lent for minutes); returns no rows."""
    check_lift_config(config)
    micro_batches_per_step(config.train, env.world_size)  # a global batch these processes cannot share
    for split in SPLITS:  # a bad line in test.jsonl is refused now, not after hours of training at round 0
        load_split(config.data, split)
    state = RunState(paths.state)
    seed = config.run.seed
    data = [_without(config.data, ("metric", "bleu_tokenize")),
            {split: file_digest(split_file(config.data, split)) for split in SPLITS}]
    # a null train.global_batch trains as before the key existed: left out, so that the
    # stages of a run from before stay done
    train = _without(config.train, (*BOOKKEEPING, *(("global_batch",) if config.train.global_batch is None else ())))
    init = path_digest(config.generator.init)  # hashed once: a checkpoint can be gigabytes
    # the sampling keys count only where rounds sample (MBR against samples): left out elsewhere,
    # so that the stages of a run from before they existed stay done
    decoding = _without(config.candidates, (*SAMPLING, *BOOKKEEPING))
    sampling = config.selector.mbr_references == "samples"

    tokenizer_key = state.run("tokenizer", [*data, config.tokenizer, path_digest(config.tokenizer.path), seed],
                              [paths.tokenizer],
                              lambda: prepare_run_tokenizer(config, paths.tokenizer))
    memory_key = state.run("retrieval", [*data, _without(config.retrieval, BOOKKEEPING)], [paths.root / "memory"],
                           lambda: build_bm25_memory(config, env, paths))
    if prepare_only:
        return []
    # the no-memory baseline first: it reads neither the memory nor the generator, and a run
    # forked from this one (results/translation.py) shares it once it is done
    baselines, baseline_key = [], None
    if config.lift.no_memory_baseline:
        baseline_path = baseline_config(config).generator.init  # the checkpoint it trains from
        baseline_init = init if baseline_path == config.generator.init else path_digest(baseline_path)
        baseline_key = state.run(NO_MEMORY, [tokenizer_key, config.data, baseline_generator(config.generator),
                                               baseline_init, train, decoding, seed],
                                 [paths.round_dir(NO_MEMORY)], lambda: _no_memory_baseline(config, env, paths))
        baselines = read_jsonl(paths.round_dir(NO_MEMORY) / "metrics.jsonl")
    generator_key = state.run("generator", [tokenizer_key, memory_key, config.data, config.generator,
                                            init, train, seed],
                              [paths.generator], lambda: train_generator(config, env, paths))
    selection = {key: getattr(config.selector, key) for key in SELECTION}
    initial = {key: selection[key] for key in ("mode", "beam")}  # what round 0's memory files depend on
    previous_key = state.run("round_0", [generator_key, memory_key, config.data, decoding, initial],
                             _round_outputs(config, paths, 0), lambda: _round_zero(config, env, paths))
    rows = baselines + read_jsonl(paths.round_dir(0) / "metrics.jsonl")
    # minimum Bayes risk trains no selector: the rounds' keys hold its settings (the later ones
    # only where they weigh: a run that sets what was the default before them, samples off and
    # mbr_retrieved_weight 0, keeps its rounds)
    selector_key = {key: getattr(config.selector, key) for key in ("mbr_utility", "mbr_temperature",
                                                                   *(MBR_ONLY if sampling else ()),
                                                                   *retrieved_keys(config.selector),
                                                                   *temperature_keys(config.selector),
                                                                   *no_memory_keys(config.selector))}
    if reads_no_memory(config.selector):  # the baseline's opinion of the candidates
        selector_key[NO_MEMORY] = baseline_key
    if config.data.metric != "bleu":  # the rounds' oracle column scores each candidate with them
        selector_key["rouge_weights"] = config.selector.rouge_weights
    if config.lift.max_rounds > 0 and config.selector.kind == "trained":
        candidates_key = state.run(
            "selector_candidates", [previous_key, decoding, config.selector.train_from,
                                    config.selector.train_subset, seed],
            [paths.selector_candidates.parent, paths.root / "crossfit", paths.candidates(1, "dev")],
            lambda: generate_selector_candidates(config, env, paths))
        selector_key = state.run(
            "selector", [candidates_key, config.data, _without(config.selector, unread_by_training(config.selector)),
                         path_digest(config.selector.path), _without(train, NOT_FOR_SELECTOR),
                         config.generator.dropout, seed],
            [paths.selector], lambda: train_selector(config, env, paths))
    last = 0
    for k in range(1, config.lift.max_rounds + 1):
        previous_key = state.run(f"round_{k}", [previous_key, selector_key, config.data,
                                                _without(config.candidates, BOOKKEEPING) if sampling else decoding,
                                                selection], _round_outputs(config, paths, k),
                                 lambda k=k: _round(config, env, paths, k))
        round_rows = read_jsonl(paths.round_dir(k) / "metrics.jsonl")
        rows += round_rows
        last = k
        seconds, resumed = state.seconds(), state.resumed()
        on_main(lambda: write_report(paths.root, config.run.name, config.data.metric, rows, seconds, resumed))
        dev = next(r for r in round_rows if r["split"] == "dev")
        if dev["changed"] == 0:
            log.info("round %d: no dev memory changed (a fixed point); stopping", k)
            break
        if k - best_round(rows) >= config.lift.patience:
            log.info("round %d: the dev metric has not risen for %d round(s); stopping", k, k - best_round(rows))
            break
    for name in [n for n in state.stages if n.startswith("round_") and int(n.split("_")[1]) > last]:
        state.forget(name, _round_outputs(config, paths, int(name.split("_")[1])))  # from an earlier, longer run
    seconds, resumed = state.seconds(), state.resumed()
    text = on_main(lambda: write_report(paths.root, config.run.name, config.data.metric, rows, seconds, resumed))
    if env.is_main:
        print(text, flush=True)
    return rows
