"""How soon a joint-memory generator learns to copy, with continuing and with slotted positions.

    python bench/copy_speed.py [--config configs/demo.yaml] [--steps 860] [--root /tmp/copy_speed] [k=v ...]

Every train and dev example gets its own reference as its memory, so the whole task is to
copy it. Two joint models, `generator.joint_positions=continue` and `=slots`, otherwise
identical (same seed, weights and batches), train side by side (one CPU thread each) and
print their dev loss after every epoch: the lower and sooner, the sooner the model copies.
The tokenizer is made first, or reused from the run directory under --root.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from memory_effect import evaluations, from_scratch, launch, prepare_shared, wait  # noqa: E402

from selfmem.common.config import load_config  # noqa: E402
from selfmem.common.data import load_split  # noqa: E402
from selfmem.common.io import atomic_write_jsonl  # noqa: E402

MODES = ("continue", "slots")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=860)
    parser.add_argument("--root", type=Path, default=Path("/tmp/copy_speed"))
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for both models")
    args = parser.parse_intermixed_args()
    args.root = args.root.resolve()  # the launched scripts run from the repository
    common = [f"run.root={args.root}", "train.max_epochs=1000", "train.patience=1000", "train.save_every=100000",
              "generator.memory=joint", *from_scratch(args.config, args.overrides)]
    config = load_config(args.config, common)
    paths = prepare_shared(args.config, common, config)
    procs, logs = {}, {}
    for mode in MODES:
        run = args.root / f"{config.run.name}_{mode}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(paths.tokenizer, run / "tokenizer")
        for split in ("train", "dev"):
            records = [{"memories": [example.target]} for example in load_split(config.data, split)]
            atomic_write_jsonl(run / "memory" / "bm25" / f"{split}.jsonl", records)
        logs[mode] = run / "train_generator.log"
        procs[mode] = launch(args.config, "train_generator.py",
                             [*common, f"run.name={run.name}", f"generator.joint_positions={mode}",
                              f"train.max_steps={args.steps}"], logs[mode], threads=1)
    for mode, proc in procs.items():
        wait(proc, logs[mode])
    curves = [evaluations(args.root / f"{config.run.name}_{mode}" / "generator" / "train_log.jsonl")
              for mode in MODES]
    print("dev loss with every example's reference as its memory:")
    print(f"{'step':>6} {'continue':>9} {'slots':>9}")
    for (step, loss, _), (_, slotted, _) in zip(*curves):
        print(f"{step:6d} {loss:9.4f} {slotted:9.4f}")


if __name__ == "__main__":
    main()
