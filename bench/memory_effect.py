"""The memory effect at first sight: dev loss of a joint-memory and a no-memory demo model
trained for the same number of steps on the same examples per step.

    python bench/memory_effect.py [--steps 6000] [--root /tmp/memory_effect]

Both use configs/demo.yaml (2+2 layers, d 128) on data/demo. Each step of both models
sees the same number of examples: the no-memory model's token budget is the joint one's
times the ratio of their mean input sizes (source + target against source + memory +
target). The two trainings run side by side, one thread each. Printed: the dev loss of
both after every epoch, and which is lower at the last one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.config import load_config  # noqa: E402
from selfmem.common.data import load_split  # noqa: E402
from selfmem.common.io import read_jsonl  # noqa: E402
from selfmem.common.run import RunPaths  # noqa: E402
from selfmem.common.tokenizer import load_tokenizer  # noqa: E402

CONFIG = REPO / "configs" / "demo.yaml"


def launch(script: str, overrides: list[str], threads: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "launch" / script), "--config", str(CONFIG), *overrides],
                            cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"{' '.join(proc.args)} failed:\n{err[-3000:]}")


def none_budget_ratio(root: Path) -> float:
    """Mean no-memory input size over mean joint input size, on the train split."""
    config = load_config(CONFIG, [f"run.root={root}"])
    paths = RunPaths(config.run_dir)
    tokenizer = load_tokenizer(paths.tokenizer)
    g = config.generator
    none = joint = 0
    for example, record in zip(load_split(config.data, "train"), read_jsonl(paths.bm25_memory("train"))):
        source = min(len(tokenizer.encode(example.source)), g.max_source_len - 1) + 1
        target = min(len(tokenizer.encode(example.target)), g.max_target_len - 1) + 1
        memory = min(len(tokenizer.encode(record["memories"][0])), g.max_memory_len - 1) + 1 if record["memories"] else 0
        none, joint = none + source + target, joint + source + memory + target
    return none / joint


def dev_losses(log: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["eval"]["dev_loss"]) for r in read_jsonl(log) if "eval" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/memory_effect"))
    args = parser.parse_args()
    common = [f"run.root={args.root}", "train.max_epochs=1000", "train.patience=1000", "train.save_every=100000"]
    for script in ("train_tokenizer.py", "retrieve.py"):
        wait(launch(script, common))
    budget = load_config(CONFIG, []).train.max_tokens
    none_budget = round(budget * none_budget_ratio(args.root))
    runs = {"joint": budget, "none": none_budget}
    for mode in runs:  # each run starts from the shared tokenizer and memory, with a fresh generator
        shutil.rmtree(args.root / f"demo_{mode}", ignore_errors=True)
        for part in ("tokenizer", "memory"):
            shutil.copytree(args.root / "demo" / part, args.root / f"demo_{mode}" / part)
    procs = [launch("train_generator.py", [*common, f"run.name=demo_{mode}", f"generator.memory={mode}",
                                           f"train.max_tokens={tokens}", f"train.max_steps={args.steps}"], threads=1)
             for mode, tokens in runs.items()]
    for proc in procs:
        wait(proc)
    joint, none = (dev_losses(args.root / f"demo_{mode}" / "generator" / "train_log.jsonl") for mode in runs)
    print(f"token budget per step: joint {budget}, none {none_budget} (the same examples per step)")
    print(f"{'epoch':>5} {'joint step':>10} {'joint dev loss':>14} {'none step':>9} {'none dev loss':>13}")
    pairs = list(zip(joint, none))
    for epoch, ((js, jl), (ns, nl)) in enumerate(pairs):
        print(f"{epoch:5d} {js:10d} {jl:14.4f} {ns:9d} {nl:13.4f}{'  joint lower' if jl < nl else ''}")
    (_, jl), (_, nl) = pairs[-1]
    print(f"last evaluation: joint {jl:.4f}, none {nl:.4f}: joint {'lower' if jl < nl else 'not lower'} "
          f"by {nl - jl:+.4f}")


if __name__ == "__main__":
    main()
