"""Soak: seeded kill-and-resume trials over the lift's stages (outside the test suite).

    python bench/faults.py [--trials 20] [--seed 0] [--root /tmp/faults]

First an uninterrupted reference run of the tests' small lift (tests/test_lift.py: 40 examples a
split, two rounds, one process). Then each trial draws a stage and a kill point from the seed
(the N-th call of the function tests/kill_in_stage.py watches in that stage: a checkpoint
save, a decoded batch, a written file), runs the lift until it SIGKILLs itself there,
runs the same command again to finish, and compares every artifact with the reference's, byte
for byte. One row per trial: the stage, the kill point, whether the process was killed (a stage
with fewer calls finishes unharmed) and whether the files are equal.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import _env  # noqa: E402
from kill_in_stage import KILL_POINTS  # noqa: E402
from test_lift import ONE_PROCESS, artifacts, lift_args  # noqa: E402

# how many times each stage of the small lift calls its kill function (tests/kill_in_stage.py):
# a kill point is drawn from 1 to that number
CALLS_IN_STAGE = {"tokenizer": 1, "retrieval": 3, "generator": 4, "round_0": 2, "selector_candidates": 4,
                  "selector": 4, "round_1": 2}


def run(args: list[str], extra_env: dict[str, str] | None = None) -> int:
    """A lift command's exit code (-9: it killed itself)."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env={**_env(), **(extra_env or {})},
                          capture_output=True, text=True, timeout=1200)
    if proc.returncode not in (0, -9):
        sys.exit(f"{' '.join(args[:2])} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("/tmp/faults"))
    args = parser.parse_args()
    lift, killer = str(REPO / "launch" / "lift.py"), str(REPO / "tests" / "kill_in_stage.py")
    reference = args.root / "reference"
    shutil.rmtree(args.root, ignore_errors=True)
    run([lift, *lift_args(reference, ONE_PROCESS)])
    expected = artifacts(reference)
    rng = random.Random(args.seed)
    print("| trial | stage | killed at call | killed | files equal the reference's | seconds |")
    print("|---|---|---|---|---|---|")
    equal = 0
    for trial in range(1, args.trials + 1):
        stage = rng.choice(sorted(KILL_POINTS))
        calls = rng.randint(1, CALLS_IN_STAGE[stage])
        root, started = args.root / f"trial_{trial}", time.perf_counter()
        code = run([killer, stage, *lift_args(root, ONE_PROCESS)], {"KILL_CALLS": str(calls)})
        run([lift, *lift_args(root, ONE_PROCESS)])
        same = artifacts(root) == expected
        equal += same
        owner, attribute, _ = KILL_POINTS[stage]
        print(f"| {trial} | {stage} | {calls} of `{attribute}` | {'yes' if code == -9 else 'no'} | "
              f"{'yes' if same else '**no**'} | {time.perf_counter() - started:.0f} |", flush=True)
        shutil.rmtree(root)
    print(f"\n{equal} of {args.trials} trials end with every file equal to the reference's")


if __name__ == "__main__":
    main()
