"""Translation, end to end: every system of docs/results.md's "Translation" section through
launch/lift.py, each resumed where it stopped, then the tables and plots from the runs.

    python results/translation.py [--corpora tm page] [--systems NAME ...] [--root DIR]
        [--data DIR] [--config configs/libreoffice_ende.yaml] [--nproc 2] [--report-only]
        [--prepare-only] [--report PATH] [k=v ...] [--across ROOT ...]

Systems (``SYSTEMS``), one lift run each under ``--root/CORPUS/NAME``:

- ``joint``: the joint-memory generator with its no-memory twin (``Transformer``), round 0
  with the BM25 memory (``Transformer-Joint``) and rounds of self memory, B = 1 (``Selfmem
  Joint``, the paper's); both corpora. Every system's rounds pick by MBR plus the twin's
  opinion of each candidate (``selector.no_memory_weight`` chosen on dev).
- ``topb4``: the same generator, Top-B with B = 4 (``selector.beam=4``).
- ``dual``: a dual-memory generator, round 0 (``Transformer-Dual``) and self memory.
- ``augment``: a generator reading two memories, the self memory added beside the
  retrieved one (``selector.mode=augment``).
- ``copy``: a joint generator trained with the copy recipe (``generator.copy_epochs=4``), its
  round 0 and self memory: does a generator that follows its memory further gain more?
- ``slots``: a joint generator with slotted positions (``generator.joint_positions=slots``),
  its round 0 and self memory, the same question.
- ``close``: a joint generator trained with close BM25 memories only
  (``retrieval.min_fuzzy_match=0.5``; an example without one has none), the same question.
- ``upper``: the joint generator with each example's reference as its memory, the paper's
  upper bound (decoded with launch/generate.py, no lift).

A run that shares stages with an earlier one (``forks``) starts as a copy of that run's
finished stages: tokenizer, BM25 memory and the no-memory baseline and, where the generator
is the same (no ``generator.*`` of its own), generator and round 0; the lift's fingerprints
then redo exactly what differs. The upper bound decodes with ``joint``'s trained generator,
and again whenever that one is trained anew. The k=v overrides go to every run (e.g.
``train.max_epochs=12``); the runs' own settings are ``BASE``.

The report (default docs/results_translation.md, with a plot per corpus beside it) is
rebuilt from each run's stages (their own ``metrics.jsonl``) and ``state.json``: per corpus,
each system on test at the round that was best on dev (dev only decides), the memory's BLEU
per round, the share of outputs that are their memory (does G copy?), the selector's pick
against the beam top-1 and the oracle, and each stage's wall time. ``--across ROOT ...``
(the roots of several runs of the experiment: seeds, ``run.seed=N`` under a root each, or other
machines) writes instead each system that trains a generator of its own in every run: round 0,
the best round of self memory, the gain within the run, and the gains' mean and standard
deviation: one run's gain of a BLEU point can be run-to-run noise (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.config import load_config  # noqa: E402
from selfmem.common.data import load_split  # noqa: E402
from selfmem.common.io import atomic_write_jsonl, atomic_write_text, read_jsonl, read_lines  # noqa: E402
from selfmem.common.metrics import corpus_bleu, corpus_chrf  # noqa: E402
from selfmem.common.records import memory_sets  # noqa: E402
from selfmem.common.run import NO_MEMORY, RunPaths  # noqa: E402
from selfmem.lift.report import best_round, save_figure  # noqa: E402

CORPORA = {"tm": "libreoffice_ende_tm", "page": "libreoffice_ende"}
# every run's settings: the config's model, trained longer than the selector runs' 3 epochs
# (the generator's own output must overtake its BM25 memory; docs/results.md); the no-memory
# baseline (the Transformer row), whose opinion of the candidates weighs in MBR's pick with a
# weight chosen on each round's dev candidates (docs/results.md)
BASE = ["train.max_epochs=12", "train.warmup_steps=1000", "train.lr=1e-3", "lift.max_rounds=4", "lift.patience=1",
        "lift.no_memory_baseline=true", "selector.no_memory_weight=null"]


@dataclass(frozen=True)
class Setup:
    """Where the runs go, what they read, and how they run."""

    root: Path  # runs under root/CORPUS/SYSTEM
    data: Path  # corpora under data/CORPUS_DIRECTORY
    config: Path
    overrides: tuple[str, ...]  # to every run, after BASE and the system's own
    nproc: int


@dataclass(frozen=True)
class System:
    """A lift configuration of the experiment: its run's name, its own overrides, its corpora."""

    name: str
    overrides: tuple[str, ...]
    corpora: tuple[str, ...]
    forks: str | None = None  # the run whose finished stages it starts from

    @property
    def own_generator(self) -> bool:
        """Whether it trains a generator of its own (sets a ``generator.*`` key, or a
        ``retrieval.*`` one: the memories it trains with)."""
        return any(o.startswith(("generator.", "retrieval.")) for o in self.overrides)

    @property
    def trains_generator(self) -> bool:
        """Whether its round 0 is its own: it forks from none, or trains a generator of its own."""
        return self.forks is None or self.own_generator


# every fork keeps joint's no-memory baseline: a generator without memory does not depend on
# what the memory settings of dual and augment change (the baseline's fingerprint leaves them out)
SYSTEMS = [
    System("joint", (), ("tm", "page")),
    System("topb4", ("selector.beam=4",), ("tm",), forks="joint"),
    System("dual", ("generator.memory=dual",), ("tm",), forks="joint"),
    System("augment", ("generator.num_memories=2", "selector.mode=augment", "selector.max_memories=2"),
           ("tm",), forks="joint"),
    # the joint generator taught to copy first (its first 4 of 12 epochs with each example's
    # reference as its memory): does a G that follows its memory further turn a better pick
    # into a better output? Chosen against `joint` on dev (docs/results.md)
    System("copy", ("generator.copy_epochs=4",), ("tm",), forks="joint"),
    # the joint generator with slotted positions (the memory's positions start at a fixed
    # slot whatever the source's length): where G does not copy its pick it writes what it
    # wrote with the BM25 memory; does a memory at a constant distance get followed further?
    # Chosen against `joint` on dev (docs/results.md)
    System("slots", ("generator.joint_positions=slots",), ("tm",), forks="joint"),
    # the joint generator trained (and decoding round 0) with close BM25 memories only, the
    # others none (hits whose source's word fuzzy match is under 0.5 dropped): a generator
    # that met only memories worth following, does it follow a self memory further? Chosen
    # against `joint` on dev
    System("close", ("retrieval.min_fuzzy_match=0.5",), ("tm",), forks="joint"),
]
BY_NAME = {s.name: s for s in SYSTEMS}
LABELS = {"joint": "Joint", "topb4": "Joint, Top-B (B = 4)", "dual": "Dual", "augment": "Joint, augmented memory",
          "copy": "Joint, copy epochs (4)", "slots": "Joint, slotted positions",
          "close": "Joint, close memories only (fuzzy match 0.5)"}
UPPER = "upper"  # the joint generator decoding with the reference as memory
# the stages that read no generator, with their directories: what a fork that trains a
# generator of its own keeps of the run it starts from
GENERATOR_FREE = {"tokenizer": "tokenizer", "retrieval": "memory", NO_MEMORY: NO_MEMORY}


def run_args(setup: Setup, corpus: str, name: str, own: tuple[str, ...] = ()) -> list[str]:
    """A run's config arguments: the config, where its data and run directory are, the
    systems' shared settings, the system's ``own``, then the command line's."""
    return ["--config", str(setup.config), f"data.dir={setup.data / CORPORA[corpus]}",
            f"run.root={setup.root / corpus}", f"run.name={name}", *BASE, *own, *setup.overrides]


def run_config(setup: Setup, corpus: str, name: str, own: tuple[str, ...] = ()):
    """The config a run reads (``run_args``)."""
    args = run_args(setup, corpus, name, own)
    return load_config(args[1], args[2:])


def stages_of(run: Path, wanted_by: str) -> dict[str, dict]:
    """A run's stage records, or an error naming what wanted them."""
    state = RunPaths(run).state
    if not state.exists():
        raise SystemExit(f"{run}: no run there, which {wanted_by} starts from: run it first "
                         f"(--systems {run.name})")
    return json.loads(state.read_text(encoding="utf-8"))["stages"]


def launch(script: str, args: list[str], nproc: int) -> None:
    """A launch script in its own process(es): torchrun for several, plain Python for one."""
    runner = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={nproc}"]
    subprocess.run([*runner, str(REPO / script), *args], cwd=REPO, check=True)


def fork(source: Path, target: Path, own_generator: bool) -> None:
    """Start ``target`` as a copy of ``source``'s finished stages before its rounds of self
    memory, or, with ``own_generator``, of those that read no generator (``GENERATOR_FREE``):
    a copied generator and round 0 would stand in the report as the fork's own until its lift
    trained them anew. Once: a started run is left to resume."""
    if (target / "state.json").exists():
        return
    stages = stages_of(source, target.name)

    def shared(stage: str) -> bool:
        return stage in GENERATOR_FREE if own_generator else not (stage.startswith("round_") and stage != "round_0")

    def left_out(directory: str, names: list[str]) -> list[str]:
        if Path(directory) != source:
            return []
        if own_generator:
            return [n for n in names if n not in GENERATOR_FREE.values()]
        return [n for n in names if n.startswith("round_") and n != "round_0"]

    kept = {name: {**record, "forked_from": source.name} for name, record in stages.items()
            if record.get("done") and shared(name)}
    partial = target.with_name(f".{target.name}.fork")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=left_out)
    (partial / "state.json").write_text(json.dumps({"stages": kept}, indent=1) + "\n", encoding="utf-8")
    partial.rename(target)


def reference_memory(config, split: str, path: Path) -> None:
    """A memory file giving each example its own reference (the upper bound's memory)."""
    atomic_write_jsonl(path, [{"memories": [ex.target]} for ex in load_split(config.data, split)])


def upper_is_current(runs: Path) -> bool:
    """Whether the upper bound under ``runs`` was decoded with ``joint``'s generator as it is
    now (trained and not being trained anew)."""
    source = runs / UPPER / "generator_fingerprint"
    if not (source.exists() and RunPaths(runs / "joint").state.exists()):
        return False
    generator = stages_of(runs / "joint", "the upper bound").get("generator", {})
    return bool(generator.get("done")) and source.read_text(encoding="utf-8") == generator["fingerprint"]


def run_upper_bound(setup: Setup, corpus: str) -> None:
    """The joint generator's dev and test hypotheses with the reference as memory: decoded
    once joint's generator is trained, and again with a generator trained anew."""
    joint, upper = setup.root / corpus / "joint", setup.root / corpus / UPPER
    generator = stages_of(joint, "the upper bound").get("generator", {})
    if not generator.get("done"):
        raise SystemExit(f"{joint}: its generator is not trained yet, which the upper bound decodes with: "
                         f"run --systems joint first")
    source = upper / "generator_fingerprint"
    if not upper_is_current(setup.root / corpus):  # decoded with an older generator, or never
        for part in ("tokenizer", "generator", "round_0"):
            shutil.rmtree(upper / part, ignore_errors=True)
    for split in ("dev", "test"):
        if (upper / "round_0" / "hyps" / f"{split}.txt").exists():
            continue
        for part in ("tokenizer", "generator"):
            if not (upper / part).exists():
                shutil.copytree(joint / part, upper / part)
        atomic_write_text(source, generator["fingerprint"])
        memory = upper / "reference_memory" / f"{split}.jsonl"
        reference_memory(run_config(setup, corpus, UPPER), split, memory)
        launch("launch/generate.py", [*run_args(setup, corpus, UPPER), "--split", split, "--mode", "hypotheses",
                                      "--memory", str(memory), "--round", "0"], setup.nproc)


def prepare_all(setup: Setup, corpora: list[str], names: list[str]) -> None:
    """The tokenizer and BM25 memory of each chosen system that forks from none (a fork copies
    them, and the no-memory baseline, from its source once that has them)."""
    for corpus in corpora:
        for system in SYSTEMS:
            if system.name in names and corpus in system.corpora and system.forks is None:
                args = run_args(setup, corpus, system.name, system.overrides)
                launch("launch/lift.py", [*args, "--prepare-only"], setup.nproc)


def run_all(setup: Setup, corpora: list[str], names: list[str]) -> None:
    """Every chosen system on every chosen corpus, in ``SYSTEMS`` order, each resumed."""
    for corpus in corpora:
        for system in SYSTEMS:
            if system.name not in names or corpus not in system.corpora:
                continue
            if system.forks is not None:
                fork(setup.root / corpus / system.forks, setup.root / corpus / system.name, system.own_generator)
            launch("launch/lift.py", run_args(setup, corpus, system.name, system.overrides), setup.nproc)
        if UPPER in names:
            run_upper_bound(setup, corpus)


def scores(hyps: list[str], references: list[str], bleu_tokenize: str) -> tuple[float, float]:
    """Corpus BLEU (with the run's tokenizer) and chrF++."""
    return corpus_bleu(hyps, references, bleu_tokenize).value, corpus_chrf(hyps, references).value


def finished_rows(run: Path) -> list[dict]:
    """A run's metric rows of the stages that are done, each read from the stage's own
    ``metrics.jsonl`` (the run's own is written only once a round of self memory ends): the
    no-memory baseline's, then rounds 0, 1, ... up to the first not done. A round being redone
    has its files removed, and the rounds after it, whose files are from before it, are left
    out too, and so is every round while the generator is being trained anew (their files are
    the old generator's until the lift redoes them); none without a run."""
    paths = RunPaths(run)
    if not paths.state.exists():
        return []
    baseline = paths.round_dir(NO_MEMORY) / "metrics.jsonl"
    rows = read_jsonl(baseline) if baseline.exists() else []
    if not stages_of(run, "the report").get("generator", {}).get("done"):
        return rows
    for k in count():  # round k reads round k-1's memory
        done = paths.round_dir(k) / "metrics.jsonl"
        if not done.exists():
            return rows
        rows += read_jsonl(done)


def best_self_round(rows: list[dict]) -> int | None:
    """The round of self memory (1 on) with the best dev metric, the earliest of equals (the
    lift's rule, ``best_round``); None before the first ends."""
    rounds = [r for r in rows if isinstance(r["round"], int) and r["round"] > 0 and r["split"] == "dev"]
    return best_round(rounds) if rounds else None


def copied_share(run: Path, round_k: int, split: str, num_memories: int) -> float:
    """The share of round ``round_k``'s outputs of ``split`` that are a text of the memory
    input they were decoded with (does G copy its memory?)."""
    paths = RunPaths(run)
    memory = paths.bm25_memory(split) if round_k == 0 else paths.round_memory(round_k, split)
    inputs = [memory_sets(f"{memory}:{i}", record, num_memories)[0] for i, record in enumerate(read_jsonl(memory), 1)]
    hyps = read_lines(paths.hyps(round_k, split))
    return sum(h in texts for h, texts in zip(hyps, inputs)) / len(hyps)


def stage_times(run: Path) -> str:
    """The wall seconds of each stage the run finished itself (not one it forked from another
    run), a resumed stage marked: its figure is its last attempt's only."""
    stages = stages_of(run, "the report")
    return ", ".join(f"{stage} {record['seconds']:.0f}" + (" (resumed: its last attempt)" if record.get("resumed") else "")
                     for stage, record in stages.items()
                     if record.get("seconds") is not None and "forked_from" not in record) or "none yet"


def corpus_report(setup: Setup, corpus: str) -> tuple[list[str], dict[str, list[dict]]]:
    """One corpus's tables (Markdown lines) and each finished run's metric rows."""
    root, config = setup.root, run_config(setup, corpus, "report")
    tokenize = config.data.bleu_tokenize
    references = {split: [ex.target for ex in load_split(config.data, split)] for split in ("dev", "test")}
    # a fork's no-memory rows are joint's, copied: left out, and with them a fork that has no other yet
    runs = {s.name: rows for s in SYSTEMS if corpus in s.corpora
            and (rows := [r for r in finished_rows(root / corpus / s.name)
                          if s.name == "joint" or r["round"] != NO_MEMORY])}
    lines = [f"### {CORPORA[corpus]}", "",
             "| system | round (best on dev) | dev BLEU | test BLEU | test chrF++ |", "|---|---:|---:|---:|---:|"]

    def row(label: str, run: Path, round_name, dev_bleu: float) -> None:
        test_bleu, test_chrf = scores(read_lines(RunPaths(run).hyps(round_name, "test")), references["test"], tokenize)
        shown = "-" if round_name == NO_MEMORY else round_name
        lines.append(f"| {label} | {shown} | {dev_bleu:.2f} | {test_bleu:.2f} | {test_chrf:.2f} |")

    for name, rows in runs.items():
        dev = {r["round"]: r["hyps"] for r in rows if r["split"] == "dev"}
        if name == "joint" and NO_MEMORY in dev:  # the others' baselines are copies of it, or trained alike
            row("Transformer (no memory)", root / corpus / name, NO_MEMORY, dev[NO_MEMORY])
        if BY_NAME[name].trains_generator and 0 in dev:
            row(f"Transformer-{LABELS[name]} (BM25 memory, round 0)", root / corpus / name, 0, dev[0])
        best = best_self_round(rows)
        if best is not None:
            row(f"Selfmem {LABELS[name]}", root / corpus / name, best, dev[best])
    upper = root / corpus / UPPER / "round_0" / "hyps"
    if (upper / "test.txt").exists() and upper_is_current(root / corpus):
        dev_bleu, _ = scores(read_lines(upper / "dev.txt"), references["dev"], tokenize)
        test_bleu, test_chrf = scores(read_lines(upper / "test.txt"), references["test"], tokenize)
        lines.append(f"| upper bound (the reference as memory) | - | {dev_bleu:.2f} | {test_bleu:.2f} | "
                     f"{test_chrf:.2f} |")
    for name, rows in runs.items():
        if not any(isinstance(r["round"], int) for r in rows):  # joint's no-memory twin only, so far
            continue
        lines += ["", f"{LABELS[name]}, per round (BLEU; the lift's best round on dev: {best_round(rows)}):", "",
                  "| round | split | hypotheses | memory | outputs that are their memory | selector's pick vs beam top-1 "
                  "| oracle | memories changed | BM25 hits' weight | temperature | no-memory opinion's weight |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        num_memories = run_config(setup, corpus, name, BY_NAME[name].overrides).generator.num_memories
        for r in rows:
            if not isinstance(r["round"], int):
                continue
            pick = "-" if r.get("top1") is None else f"{r['memory'] - r['top1']:+.2f}"
            oracle = "-" if r.get("oracle") is None else f"{r['oracle']:.2f}"
            changed = "-" if r.get("changed") is None else r["changed"]
            weight, temperature, opinion = ("-" if r.get(key) is None else f"{r[key]:g}"
                                            for key in ("retrieved_weight", "temperature", "no_memory_weight"))
            copies = copied_share(root / corpus / name, r["round"], r["split"], num_memories)
            lines.append(f"| {r['round']} | {r['split']} | {r['hyps']:.2f} | {r['memory']:.2f} | {copies:.1%} | {pick} | "
                         f"{oracle} | {changed} | {weight} | {temperature} | {opinion} |")
        lines += ["", "wall seconds per stage: " + stage_times(root / corpus / name)]
    return lines + [""], runs


class RunGain(NamedTuple):
    """One run's round 0 and its best round of self memory (BLEU): dev, test at each, gains."""

    round_0_dev: float
    round_0_test: float
    best_round: int | None
    best_dev: float | None
    best_test: float | None

    def gains(self) -> tuple[float, float] | None:
        """Self memory over round 0 within the run, dev and test; None before a round of it."""
        return None if self.best_round is None else (self.best_dev - self.round_0_dev,
                                                     self.best_test - self.round_0_test)


def run_gain(run: Path, references: list[str], bleu_tokenize: str) -> RunGain | None:
    """A run's round 0 and best round of self memory on dev, test scored at each; None before
    its round 0 ends."""
    rows = finished_rows(run)
    dev = {r["round"]: r["hyps"] for r in rows if r["split"] == "dev"}
    if 0 not in dev:
        return None

    def test(k: int) -> float:
        return scores(read_lines(RunPaths(run).hyps(k, "test")), references, bleu_tokenize)[0]

    best = best_self_round(rows)
    if best is None:
        return RunGain(dev[0], test(0), None, None, None)
    return RunGain(dev[0], test(0), best, dev[best], test(best))


def across_runs(setup: Setup, roots: list[Path], corpus: str) -> list[str]:
    """Markdown lines: each system that trains a generator of its own, in every run of the
    experiment under ``roots`` (other seeds, other machines): round 0 and the best round of self
    memory on dev, test at each, the gain of self memory within the run, and the mean and
    standard deviation over the runs that reached a round of self memory."""
    config = run_config(setup, corpus, "report")
    references = [ex.target for ex in load_split(config.data, "test")]
    lines = [f"### {CORPORA[corpus]}, across runs", "",
             "| system | run | round 0 dev | round 0 test | best round | dev | test | gain dev | gain test |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for system in SYSTEMS:
        if corpus not in system.corpora or not system.trains_generator:
            continue
        label, with_rounds = LABELS[system.name], []
        for root in roots:
            run = run_gain(root / corpus / system.name, references, config.data.bleu_tokenize)
            if run is None:
                continue
            if run.best_round is None:
                lines.append(f"| {label} | `{root}` | {run.round_0_dev:.2f} | {run.round_0_test:.2f} | "
                             "- | - | - | - | - |")
                continue
            figures = (run.round_0_dev, run.round_0_test, run.best_dev, run.best_test, *run.gains())
            with_rounds.append(figures)
            lines.append(f"| {label} | `{root}` | {figures[0]:.2f} | {figures[1]:.2f} | {run.best_round} | "
                         f"{figures[2]:.2f} | {figures[3]:.2f} | {figures[4]:+.2f} | {figures[5]:+.2f} |")
        if len(with_rounds) > 1:
            spread = [f"{statistics.mean(column):.2f} ({statistics.stdev(column):.2f})" for column in zip(*with_rounds)]
            lines.append(f"| {label} | mean (sd) of {len(with_rounds)} runs | {spread[0]} | {spread[1]} | - | "
                         f"{spread[2]} | {spread[3]} | {spread[4]} | {spread[5]} |")
    return lines + [""]


def plot(path: Path, corpus: str, runs: dict[str, list[dict]]) -> bool:
    """Dev BLEU per round of each run, the no-memory and BM25 lines; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in runs.items():
        dev = [r for r in rows if r["split"] == "dev" and isinstance(r["round"], int)]
        if dev:  # a run with no round yet (its generator still training) has no line, nor a legend entry
            ax.plot([r["round"] for r in dev], [r["hyps"] for r in dev], "o-", label=name)
        if name == "joint":  # its round 0 and its twin, where finished (a stage being redone has no row)
            for r in rows:
                if r["split"] == "dev" and r["round"] == 0:
                    ax.axhline(r["hyps"], color="gray", linestyle="--", linewidth=1, label="BM25 memory (joint)")
                if r["split"] == "dev" and r["round"] == NO_MEMORY:
                    ax.axhline(r["hyps"], color="black", linestyle=":", linewidth=1, label="no memory")
    ax.set_title(CORPORA[corpus])
    ax.set_xlabel("round")
    ax.set_ylabel("dev BLEU")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def write_report(setup: Setup, corpora: list[str], report: Path) -> str:
    """The report and a plot per corpus beside it; returns the report's text."""
    lines = ["# Translation results (generated by results/translation.py)", "",
             f"Runs under `{setup.root}`; test read only at the round that was best on dev.", ""]
    for corpus in corpora:
        corpus_lines, runs = corpus_report(setup, corpus)
        lines += corpus_lines
        image = report.with_name(f"{report.stem}_{corpus}.png")
        if runs and plot(image, corpus, runs):
            lines += [f"![{CORPORA[corpus]}, dev BLEU per round]({image.name})", ""]
    text = "\n".join(lines)
    atomic_write_text(report, text)
    return text


def write_across_report(setup: Setup, corpora: list[str], roots: list[Path], report: Path) -> str:
    """The report of several runs of the experiment side by side (``across_runs``); returns its text."""
    lines = ["# Translation results across runs (generated by results/translation.py --across)", "",
             "Test read only at each run's round that was best on dev; the mean and standard deviation "
             "over the runs that reached a round of self memory.", ""]
    for corpus in corpora:
        lines += across_runs(setup, roots, corpus)
    text = "\n".join(lines)
    atomic_write_text(report, text)
    return text


def main() -> None:
    """Run or resume the chosen systems (unless --report-only), then write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--systems", nargs="+", default=[s.name for s in SYSTEMS] + [UPPER],
                        choices=[s.name for s in SYSTEMS] + [UPPER])
    parser.add_argument("--root", type=Path, default=Path.home() / "selfmem-results", help="the runs' directory")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the corpora's directory")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "libreoffice_ende.yaml")
    parser.add_argument("--nproc", type=int, default=min(2, os.cpu_count() or 1), help="processes per run")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the runs as they are")
    parser.add_argument("--prepare-only", action="store_true",
                        help="only the tokenizer and BM25 memory (results/gpu_translation.sh's preparation on a CPU)")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "results_translation.md")
    parser.add_argument("--across", type=Path, nargs="+", metavar="ROOT",
                        help="run nothing; report each system that trains a generator of its own across the "
                             "runs of the experiment under these roots (other seeds, other machines): its gain "
                             "in each, their mean and spread")
    args, overrides = parser.parse_known_args()
    for root in args.across or ():  # a k=v after --across would be taken for a root
        if not root.is_dir():
            parser.error(f"--across: {root} is no directory of runs (k=v settings go before --across)")
    setup = Setup(args.root, args.data, args.config, tuple(overrides), args.nproc)
    if args.prepare_only:
        prepare_all(setup, args.corpora, args.systems)
        return
    if args.across:  # reads runs, runs none
        print(write_across_report(setup, args.corpora, args.across, args.report))
        return
    if not args.report_only:
        run_all(setup, args.corpora, args.systems)
    print(write_report(setup, args.corpora, args.report))


if __name__ == "__main__":
    main()
