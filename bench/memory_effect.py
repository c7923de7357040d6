"""The memory effect: a joint- (or dual-) memory generator against the same generator
without memory, trained for the same number of steps on the same examples per step.

    python bench/memory_effect.py [--memory joint|dual] [--config configs/demo.yaml] [--steps 6000]
                                  [--seeds 1234 1 2] [--root /tmp/memory_effect] [k=v ...]
    python bench/memory_effect.py --report [--memory ...] [--seeds ...] [--config ...] [--root ...]  # finished or cut runs
    python bench/memory_effect.py --prepare [--config ...] [--root ...] [k=v ...]  # tokenizer and memory only,
                                                                                 # and how close its memories are

Each step of both models sees the same number of examples on average: the no-memory
model's token budget is the one that cuts an epoch into as many steps as the memory model's.
The two trainings run side by side (one CPU thread each, or sharing the GPU). The
tokenizer and BM25 memory are made first, or reused when the run directory under --root
already has them. Printed: dev loss and dev metric (greedy decoding) of both after every
epoch, and which is lower at the last one; then the dev and test loss of both kept models
(best dev metric) on the examples grouped by how close their top memory is to the reference
(sentence BLEU), since a memory can only help where it holds part of the translation, and
the memory model's loss with each example's own reference as its memory (how much it has
learned to copy). Test is read only here: any setting tried on dev can be checked on it.
Each evaluation of the memory model is set against the no-memory model's at the same step,
or the next later one where generator.copy_epochs makes the memory model's first epochs
shorter.
With several seeds (each sets the initial weights and the batch order of both models),
the last evaluations are put side by side: on the demo the no-memory model's last dev loss
spans 0.026 over four seeds at 3,000 steps and 0.030 at 6,000 (0.048 on the page-split demo
at 4,816, more than the memory changed it there on average), so one pair of runs decides
nothing. --report reads each run's own config.yaml, so it needs no overrides. Native generators
only (not `generator.engine: hf`). Both models train from scratch: the checkpoints a config
starts from (the demo's shipped ones) are dropped. configs/demo.yaml sets
`generator.joint_positions: slots` (its shipped model's); the plain joint runs of
docs/results.md pass `generator.joint_positions=continue`, the demo config's setting until
2026-12-01.
"""

from __future__ import annotations

import argparse
import bisect
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.batching import token_budget_batches  # noqa: E402
from selfmem.common.config import load_config  # noqa: E402
from selfmem.common.data import load_split  # noqa: E402
from selfmem.common.distributed import DistEnv  # noqa: E402
from selfmem.common.generator_inputs import collate, encode_examples  # noqa: E402
from selfmem.common.io import read_jsonl  # noqa: E402
from selfmem.common.run import RunPaths  # noqa: E402
from selfmem.models import Seq2SeqModel  # noqa: E402
from selfmem.models.build import is_native_checkpoint  # noqa: E402
from selfmem.retrieve.memory import bm25_hits  # noqa: E402
from selfmem.train.generator import prepare_generator  # noqa: E402

MEMORY_BLEU_GROUPS = ((0, 20), (20, 50), (50, 101))  # sentence BLEU of the top memory against the reference
ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)



def from_scratch(config_path: Path, overrides: list[str]) -> list[str]:
    """Overrides that drop the checkpoints a config starts from (the demo's shipped vocabulary and
    generators), placed before ``overrides`` so that an explicit one still wins: these benches
    compare trainings from scratch."""
    config = load_config(config_path, overrides)
    dropped = []
    if config.tokenizer.kind == "sentencepiece" and config.tokenizer.path:
        dropped.append("tokenizer.path=null")
    if config.generator.init and is_native_checkpoint(config.generator.init):
        dropped.append("generator.init=null")
    if config.lift.no_memory_init:
        dropped.append("lift.no_memory_init=null")
    return [*dropped, *overrides]


def launch(config: Path, script: str, overrides: list[str], log: Path, threads: int = 2) -> subprocess.Popen:
    """Start a launch script; its output goes to ``log`` (a pipe nobody reads while the
    other run trains would fill up and stall it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen([sys.executable, str(REPO / "launch" / script), "--config", str(config), *overrides],
                                cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
                                stdout=out, stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, log: Path) -> None:
    if proc.wait():
        sys.exit(f"{' '.join(proc.args)} failed:\n{log.read_text(encoding='utf-8')[-3000:]}")


def prepare_shared(config_path: Path, overrides: list[str], config) -> RunPaths:
    """The run directory holding the tokenizer and BM25 memory every compared run starts
    from; each is made unless it is there already."""
    paths = RunPaths(config.run_dir)
    for script, done in (("train_tokenizer.py", paths.tokenizer), ("retrieve.py", paths.bm25_memory("train"))):
        if not done.exists():
            log = paths.root / f"{Path(script).stem}.log"
            wait(launch(config_path, script, overrides, log), log)
    return paths


def matched_none_budget(config_path: Path, common: list[str], memory: str) -> int:
    """The no-memory token budget that cuts an epoch into as many steps as the memory model's
    budget does, so both see the same examples per step (a ratio of mean sizes is not
    enough: inputs with memory vary more in length, so their batches carry more padding)."""
    configs = {mode: load_config(config_path, [*common, f"generator.memory={mode}"]) for mode in (memory, "none")}
    paths = RunPaths(configs[memory].run_dir)
    with_memory, none = (prepare_generator(config, ONE_PROCESS, paths)[1] for config in configs.values())
    seed = configs["none"].run.seed
    # epoch 0 of the retrieved memory (copy epochs, if any, train on other inputs)
    steps = len(token_budget_batches(with_memory.train_sizes, configs[memory].train.max_tokens, seed, 0))
    low, high = 1, configs[memory].train.max_tokens  # shorter inputs: the no-memory budget is below the other's
    while low < high:
        middle = (low + high) // 2
        if len(token_budget_batches(none.train_sizes, middle, seed, 0)) <= steps:
            high = middle
        else:
            low = middle + 1
    if len(token_budget_batches(none.train_sizes, low, seed, 0)) > steps:
        print(f"warning: even the {memory} budget cuts the no-memory epoch into more than {steps} steps",
              file=sys.stderr)
    return low


def evaluations(log: Path) -> list[tuple[int, float, float]]:
    """(step, dev loss, dev metric) of every evaluation in a training log."""
    return [(r["step"], r["eval"]["dev_loss"], r["eval"]["metric"]) for r in read_jsonl(log) if "eval" in r]


@torch.no_grad()
def example_losses(config, split: str, reference_as_memory: bool = False) -> list[tuple[float, int]]:
    """(summed cross entropy, target tokens) of every example of ``split`` under the run's kept
    generator, with its retrieved memories or with its own reference as the memory."""
    paths = RunPaths(config.run_dir)
    _, task = prepare_generator(config, ONE_PROCESS, paths)
    data = load_split(config.data, split)
    memories = ([[example.target] for example in data] if reference_as_memory
                else list(bm25_hits(paths, split, len(data))))
    examples = encode_examples(data, memories, task.tokenizer, config.generator)
    model = Seq2SeqModel.load(paths.generator, ONE_PROCESS.device)
    losses = []
    for start in range(0, len(examples), 32):
        batch = {k: v.to(ONE_PROCESS.device) for k, v in collate(examples[start:start + 32], task.mode, task.ids).items()}
        logits = model(batch["src"], batch["decoder_input"], batch.get("memory"))
        token_loss = F.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=task.ids.pad, reduction="none")
        counts = (batch["labels"] != task.ids.pad).sum(1)
        losses += [(loss, count) for loss, count in zip(token_loss.sum(1).tolist(), counts.tolist())]
    return losses


def run_name(name: str, seed: int, mode: str) -> str:
    return f"{name}_s{seed}_{mode}"


def top_memory_bleu(config, split: str) -> tuple[list[str], list[str], list[float]]:
    """Each example's top BM25 memory ("" if none), its reference, and the memory's sentence
    BLEU against the reference (-1 where retrieval.min_fuzzy_match dropped every hit)."""
    references = [example.target for example in load_split(config.data, split)]
    tops = [(r["memories"] or [""])[0] for r in read_jsonl(RunPaths(config.run_dir).bm25_memory(split))]
    bleu = sacrebleu.BLEU(tokenize=config.data.bleu_tokenize, effective_order=True)
    return tops, references, [bleu.sentence_score(m, [r]).score if m else -1 for m, r in zip(tops, references)]


def print_memory_closeness(config) -> None:
    """How close the top memories are to the references, per split: a model trained on
    train memories meets dev and test memories at evaluation, so the two should match."""
    for split in ("train", "dev", "test"):
        tops, references, memory_bleu = top_memory_bleu(config, split)
        corpus = sacrebleu.corpus_bleu(tops, [references], tokenize=config.data.bleu_tokenize).score
        close = sum(b >= MEMORY_BLEU_GROUPS[-1][0] for b in memory_bleu) / len(memory_bleu)
        print(f"{split}: top memory vs reference: corpus BLEU {corpus:.2f}; {close:.1%} of {len(tops)} examples "
              f"at sentence BLEU {MEMORY_BLEU_GROUPS[-1][0]}+")


def loss_by_memory_quality(root: Path, names: dict[str, str], split: str) -> None:
    """Loss of both kept models (``names``: mode -> run name) on ``split``, per group of
    examples by their top memory's sentence BLEU."""
    memory, modes = next(iter(names)), tuple(names)
    configs = {mode: load_config(root / names[mode] / "config.yaml", []) for mode in modes}
    _, references, memory_bleu = top_memory_bleu(configs[memory], split)
    losses = {mode: example_losses(config, split) for mode, config in configs.items()}
    print(f"{split} loss of the kept models by top-memory sentence BLEU ({len(references)} {split} examples):")
    print(f"{'memory BLEU':>11} {'examples':>8} {memory:>7} {'none':>7} {f'none - {memory}':>12}")
    groups = [("no memory", [i for i, b in enumerate(memory_bleu) if b < 0])]
    groups += [(f"{low}-{min(high, 100)}", [i for i, b in enumerate(memory_bleu) if low <= b < high])
               for low, high in MEMORY_BLEU_GROUPS] + [("all", list(range(len(references))))]
    for label, members in groups:
        if members:
            mean = {mode: sum(losses[mode][i][0] for i in members) / sum(losses[mode][i][1] for i in members)
                    for mode in modes}
            print(f"{label:>11} {len(members):8d} {mean[memory]:7.4f} {mean['none']:7.4f} "
                  f"{mean['none'] - mean[memory]:+12.4f}")
    # A model that has learned to copy from its memory is nearly certain here
    oracle = example_losses(configs[memory], split, reference_as_memory=True)
    print(f"with its reference as the memory, the {memory} model's {split} loss is "
          f"{sum(loss for loss, _ in oracle) / sum(count for _, count in oracle):.4f}")


def report(root: Path, name: str, memory: str, seeds: list[int]) -> None:
    """Per seed, the two training logs' evaluations side by side, epoch by epoch, and the kept
    models' loss by memory quality; then, for several seeds, the last evaluations together:
    the spread of the no-memory model's loss over seeds is the yardstick for a difference."""
    last = {}
    for seed in seeds:
        names = {mode: run_name(name, seed, mode) for mode in (memory, "none")}
        ours, none = (evaluations(root / names[mode] / "generator" / "train_log.jsonl") for mode in names)
        print(f"seed {seed}:")
        print(f"{'epoch':>5} {f'{memory} step':>10} {'loss':>7} {'metric':>7} {'none step':>9} {'loss':>7} {'metric':>7}")
        # each evaluation against the no-memory one at the same or the next later step
        # (equal with equal epochs; copy epochs are shorter), none after the last of those
        none_steps = [step for step, _, _ in none]
        pairs = [(ours_eval, none[k]) for ours_eval in ours
                 if (k := bisect.bisect_left(none_steps, ours_eval[0])) < len(none)]
        for epoch, ((ms, ml, mm), (ns, nl, nm)) in enumerate(pairs):
            print(f"{epoch:5d} {ms:10d} {ml:7.4f} {mm:7.2f} {ns:9d} {nl:7.4f} {nm:7.2f}"
                  f"{f'  {memory} lower' if ml < nl else ''}")
        if not pairs:
            continue
        (_, ml, mm), (_, nl, nm) = last[seed] = pairs[-1]
        lower = sum(m[1] < n[1] for m, n in pairs)
        print(f"last evaluation: {memory} loss {ml:.4f}, none {nl:.4f}: {memory} "
              f"{'lower' if ml < nl else 'not lower'} by {nl - ml:+.4f}; metric {memory} {mm:.2f}, none {nm:.2f}; "
              f"{memory} lower at {lower} of {len(pairs)} evaluations")
        print(f"best: {memory} loss {min(m[1] for m in ours):.4f}, metric {max(m[2] for m in ours):.2f}; "
              f"none loss {min(n[1] for n in none):.4f}, metric {max(n[2] for n in none):.2f}")
        for split in ("dev", "test"):  # test: nothing above was chosen by it
            loss_by_memory_quality(root, names, split)
    if len(last) > 1:
        differences = [n[1] - m[1] for m, n in last.values()]
        none_losses = [n[1] for _, n in last.values()]
        print(f"over {len(last)} seeds, last evaluation: none - {memory} dev loss "
              f"{', '.join(f'{d:+.4f}' for d in differences)}, mean {statistics.mean(differences):+.4f}; "
              f"the no-memory model's own dev loss spans {max(none_losses) - min(none_losses):.4f} over the seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/memory_effect"))
    parser.add_argument("--memory", choices=["joint", "dual"], default="joint", help="the memory model's mode")
    parser.add_argument("--seeds", type=int, nargs="+", help="one pair of runs per seed (default: run.seed)")
    parser.add_argument("--report", action="store_true", help="only print the table of the runs under --root")
    parser.add_argument("--prepare", action="store_true",
                        help="only make the tokenizer and BM25 memory under --root (before runs of several seeds "
                             "are started side by side)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for both models")
    args = parser.parse_intermixed_args()
    args.root = args.root.resolve()  # the launched scripts run from the repository
    common = [f"run.root={args.root}", "train.max_epochs=1000", "train.patience=1000", "train.save_every=100000",
              *from_scratch(args.config, args.overrides)]
    config = load_config(args.config, common)
    name = config.run.name
    memory, modes = args.memory, (args.memory, "none")
    seeds = args.seeds or [config.run.seed]
    if args.report:
        return report(args.root, name, memory, seeds)
    paths = prepare_shared(args.config, common, config)
    if args.prepare:
        return print_memory_closeness(config)
    for seed in seeds:  # both models of a seed train side by side; seeds one after the other
        seeded = [*common, f"run.seed={seed}"]
        budgets = {memory: config.train.max_tokens, "none": matched_none_budget(args.config, seeded, memory)}
        names = {mode: run_name(name, seed, mode) for mode in modes}
        for mode in modes:  # each run starts from the shared tokenizer and memory, with a fresh generator
            shutil.rmtree(args.root / names[mode], ignore_errors=True)
            shutil.copytree(paths.tokenizer, args.root / names[mode] / "tokenizer")
            shutil.copytree(paths.bm25_memory("train").parent, args.root / names[mode] / "memory" / "bm25")
        logs = {mode: args.root / names[mode] / "train_generator.log" for mode in modes}
        procs = {mode: launch(args.config, "train_generator.py",
                              [*seeded, f"run.name={names[mode]}", f"generator.memory={mode}",
                               f"train.max_tokens={budgets[mode]}", f"train.max_steps={args.steps}"], logs[mode],
                              threads=1)
                 for mode in modes}
        for mode, proc in procs.items():
            wait(proc, logs[mode])
        print(f"seed {seed}: token budget per step: {memory} {budgets[memory]}, none {budgets['none']} "
              "(the same examples per step)")
    report(args.root, name, memory, seeds)


if __name__ == "__main__":
    main()
