"""Selector variants on real candidates: each one's pick against the beam top-1 and the oracle.

    python bench/selector_quality.py --config configs/libreoffice_ende.yaml [--variants NAME ...]
        [--splits dev] [k=v ...]

Needs the run's trained generator (launch/train_generator.py). Generates the candidates where
missing, as the lift does: every dev and test example with round 0's memory (round 1's
candidates) and, for the trained variants, ``selector.train_subset`` train examples (with
their BM25 memory; from the crossfit generators for ``train_from: crossfit``); for the
variants with samples as MBR's pseudo-references, ``candidates.num_samples`` epsilon samples
of each example of --splits, from the same memory (round 1's samples); for the variant with
the no-memory opinion, the scores of the run's no-memory baseline (``no_memory/generator``, as
``lift.no_memory_baseline`` trains it) into ``round_1/no_memory_scores/``. Then, for
each variant, the pick of every example of each split in --splits, and one table per split:
the corpus BLEU and chrF++ of the beam top-1 (the first candidate), of the oracle pick (the
candidate of best sentence BLEU against the reference) and of each variant's pick, with
its difference from the top-1 in BLEU. A trained variant trains its selector in
``selectors/NAME/`` of the run (resumed or reused when there), exactly as
launch/train_selector.py does, the best epoch kept by the dev metric of its pick.

Choose on dev; read test once, for the chosen variants (``--splits test --variants ...``):
the kept epoch of a trained variant and the settings a ``...dev`` variant chooses on the
round's dev candidates (MBR's weights and temperature) are chosen on dev, so their dev
figures are optimistic; test is the fair one.

The candidates and samples files record the settings that made them (``*.made_with.json``
beside them: the ``candidates`` keys that change what is decoded, and the digest of the
generator); a file made under others is refused, not reused. Point ``run.root`` at a copy
of a lift's run (its generator, tokenizer and BM25 memory): the lift's own round 1 holds
its 50 candidates, and a missing file's making writes round 0's memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.config import Config, load_config  # noqa: E402
from selfmem.common.data import load_split  # noqa: E402
from selfmem.common.digest import config_values, path_digest  # noqa: E402
from selfmem.common.distributed import agreed, close_distributed, init_distributed, on_main  # noqa: E402
from selfmem.common.io import atomic_write_text  # noqa: E402
from selfmem.common.metrics import corpus_bleu, corpus_chrf  # noqa: E402
from selfmem.common.entry import start_run  # noqa: E402
from selfmem.common.run import RunPaths  # noqa: E402
from selfmem.infer.generate import generate  # noqa: E402
from selfmem.retrieve.memory import initial_memory, iter_retrieved  # noqa: E402
from selfmem.select.candidates import baseline_picks, read_candidates, selector_examples, sentence_metric  # noqa: E402
from selfmem.select.pick import top_b  # noqa: E402
from selfmem.select.stage import (  # noqa: E402
    chosen_on_dev,
    mbr_scorer,
    prepare_no_memory_scores,
    reads_no_memory,
    reads_retrieved,
    trained_scorer,
)
from selfmem.train.selector import train_selector  # noqa: E402

TRAINED = "selector.kind=trained"
SAMPLES = "selector.mbr_references=samples"
# MBR without the no-memory baseline's opinion (whatever the config's default), so that each
# variant is what its name says
MBR = ["selector.kind=mbr", "selector.no_memory_weight=0"]
# MBR against the candidates (or samples) alone, as before the retrieved memory weighed
CONSENSUS = [*MBR, "selector.mbr_retrieved_weight=0"]
BLEU = "selector.mbr_utility=bleu"
CHRF = "selector.mbr_utility=chrf"
# name -> overrides of the run's config; the trained ones are trained in selectors/NAME/
VARIANTS = {
    "mbr-bleu": [*CONSENSUS, BLEU],
    "mbr-bleu-g1": [*CONSENSUS, BLEU, "selector.mbr_temperature=1.0"],
    "mbr-bleu-g0.2": [*CONSENSUS, BLEU, "selector.mbr_temperature=0.2"],
    "mbr-chrf": [*CONSENSUS, CHRF],
    "mbr-bleu-samples": [*CONSENSUS, BLEU, SAMPLES],
    "mbr-chrf-samples": [*CONSENSUS, CHRF, SAMPLES],
    # the default: chrF++, the top 5 BM25 hits weighing what dev chooses among
    # selector.mbr_retrieved_weight_choices, with the temperature (both printed)
    "mbr-chrf+top5dev": [*MBR, CHRF, "selector.mbr_retrieved_hits=5", "selector.mbr_retrieved_weight=null"],
    # and the no-memory baseline's opinion of each candidate, its weight chosen on dev with them
    # (needs the run's no_memory/generator: lift.no_memory_baseline)
    "mbr-chrf+top5dev+nomem": ["selector.kind=mbr", CHRF, "selector.mbr_retrieved_hits=5",
                               "selector.mbr_retrieved_weight=null", "selector.no_memory_weight=null"],
    # the retrieved memory, the top K BM25 hits, as pseudo-references sharing weight W;
    # W = 1000: the candidate closest to the hits, the consensus aside
    **{f"mbr-{u}+top{k}w{w}": [*MBR, f"selector.mbr_utility={u}", f"selector.mbr_retrieved_hits={k}",
                               f"selector.mbr_retrieved_weight={w}"]
       for u in ("bleu", "chrf") for k in (1, 3, 5) for w in (1, 2, 4, 8, 16, 1000)},
    "S": [TRAINED],
    "S+g": [TRAINED, "selector.features=[generator]"],
    "S+g+mbr": [TRAINED, "selector.features=[generator,mbr]", BLEU, "selector.mbr_retrieved_weight=0"],
    "S-crossfit": [TRAINED, "selector.train_from=crossfit"],
    "S-crossfit+g": [TRAINED, "selector.train_from=crossfit", "selector.features=[generator]"],
}


def variant_paths(paths: RunPaths, config: Config, name: str) -> RunPaths:
    """The run's paths with the variant's own selector (and crossfit candidates) directory."""
    candidates = "selector_candidates" if config.selector.train_from == "train" else "selector_candidates_crossfit"
    return dataclasses.replace(paths, selector_dir=f"selectors/{name}", selector_candidates_dir=candidates)


def made_with(config: Config, generator: str, mode: str) -> dict:
    """What a round-1 candidates (``mode`` "candidates") or samples file depends on besides
    the run's BM25 memory: the decoding keys of its mode and ``generator``, its digest."""
    unread = ("max_tokens", "stream_batches", "hypothesis_beams",
              *(("num_beams", "num_return", "early_stopping") if mode == "samples" else ("num_samples", "epsilon")))
    return {**config_values(config, ("candidates",), [f"candidates.{key}" for key in unread]),
            "generator": generator}


def ensure_decoded(config: Config, env, paths: RunPaths, split: str, mode: str, generator: str) -> None:
    """Round 1's ``mode`` file of ``split``, decoded from round 0's memory by the run's
    generator (``generator``: its digest) where missing; one there is checked against the settings it records (or, from before they were recorded, its
    candidate count)."""
    path = paths.candidates(1, split) if mode == "candidates" else paths.samples(1, split)
    record = path.with_name(f"{path.stem}.made_with.json")
    settings = made_with(config, generator, mode)
    if not agreed(path.exists):
        generate(config, env, paths, split, mode, initial_memory(config, paths, split), 1)
        on_main(lambda: atomic_write_text(record, json.dumps(settings, indent=1, sort_keys=True) + "\n"))
        return

    def verdict() -> str | None:
        if record.exists():
            made = json.loads(record.read_text(encoding="utf-8"))
            changed = [f"{key} {made.get(key)!r} -> {settings.get(key)!r}" for key in sorted(made.keys() | settings.keys())
                       if made.get(key) != settings.get(key)]
            return f"made under other settings ({'; '.join(changed)})" if changed else None
        with open(path, encoding="utf-8") as f:
            count = len(json.loads(f.readline())["candidates"][0])
        if mode == "candidates" and count != config.candidates.num_return:
            return f"holds {count} candidates an example, not candidates.num_return = {config.candidates.num_return}"
        return None

    problem = agreed(verdict)
    if problem:
        raise SystemExit(f"error: {path} {problem}: delete it, or point run.root at a copy of the run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--splits", nargs="+", default=["dev"], choices=["dev", "test"])
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, overrides)
    env = init_distributed()
    paths = start_run(config, env)
    generator = agreed(lambda: path_digest(paths.generator))  # hashed once, by rank 0
    for split in ("dev", "test"):  # round 1's candidates, from round 0's memory (the BM25 memory)
        ensure_decoded(config, env, paths, split, "candidates", generator)
    if any(SAMPLES in VARIANTS[name] for name in args.variants):
        for split in args.splits:  # and their samples, MBR's pseudo-references, from the same memory
            ensure_decoded(config, env, paths, split, "samples", generator)
    picks: dict[str, dict[str, list[str]]] = {split: {} for split in args.splits}
    seconds = {}
    for name in args.variants:
        variant = load_config(args.config, [*overrides, *VARIANTS[name]])
        variant = chosen_on_dev(variant, env, paths, 1)  # a null weight: it and the temperature chosen on dev
        vpaths = variant_paths(paths, variant, name)
        started = time.perf_counter()
        if variant.selector.kind == "trained":
            train_selector(variant, env, vpaths)  # returns at once when trained before
        score = trained_scorer(variant, env, vpaths) if variant.selector.kind == "trained" else mbr_scorer(variant)
        for split in args.splits:
            examples = load_split(config.data, split)
            samples = paths.samples(1, split) if variant.selector.mbr_references == "samples" else None
            retrieved = iter_retrieved(variant, paths, split, len(examples)) if reads_retrieved(variant.selector) else None
            prepare_no_memory_scores(variant, env, paths, split, 1, paths.candidates(1, split))
            opinions = paths.no_memory_scores(1, split) if reads_no_memory(variant.selector) else None
            lines = read_candidates(paths.candidates(1, split), len(examples), split, samples, retrieved, opinions)
            chunk = list(zip(lines, examples))
            scores = score(chunk, [True] * len(chunk))
            picks[split][name] = [top_b(line.pool, s, 1)[0] for line, s in zip(lines, scores)]
            if env.is_main:  # as it comes: a long run's early variants are not lost with its end
                references = [ex.target for ex in examples]
                bleu = corpus_bleu(picks[split][name], references, config.data.bleu_tokenize).value
                top1 = corpus_bleu([line.pool[0] for line in lines], references, config.data.bleu_tokenize).value
                print(f"{name} on {split}: BLEU {bleu:.2f}, beam top-1 {top1:.2f}", flush=True)
        seconds[name] = time.perf_counter() - started
    if env.is_main:
        c = config.candidates
        print(f"\nrun {paths.root}; {c.num_beams} beams, {c.num_return} candidates returned per example; "
              f"command: python bench/selector_quality.py {' '.join(sys.argv[1:])}")
        for split in args.splits:
            examples = load_split(config.data, split)
            references = [ex.target for ex in examples]
            rows = baseline_picks(selector_examples(paths.candidates(1, split), examples, sentence_metric(config),
                                                    split))
            rows = {"beam top-1": rows["top1"], "oracle": rows["oracle"], **picks[split]}
            top1 = corpus_bleu(rows["beam top-1"], references, config.data.bleu_tokenize).value
            print(f"\n{split} ({len(examples)} examples)\n")
            print("| pick | BLEU | chrF++ | BLEU vs top-1 | seconds |")
            print("|---|---:|---:|---:|---:|")
            for name, texts in rows.items():
                bleu = corpus_bleu(texts, references, config.data.bleu_tokenize).value
                chrf = corpus_chrf(texts, references).value
                took = f"{seconds[name]:.0f}" if name in seconds else ""
                print(f"| {name} | {bleu:.2f} | {chrf:.2f} | {bleu - top1:+.2f} | {took} |")
    close_distributed()


if __name__ == "__main__":
    main()
