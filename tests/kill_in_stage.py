"""Run launch/lift.py in this process and SIGKILL it inside one stage (for the resume tests).

python tests/kill_in_stage.py STAGE --config ... [k=v ...]: the process kills itself, with
no chance to clean up, at a point inside STAGE where part of the stage's work is written.
KILL_CALLS=N in the environment moves the point to the N-th call of the stage's kill function
(bench/faults.py draws it); a stage that makes fewer calls finishes unharmed.

Under torchrun every rank runs this script: KILL_RANK=R lets only rank R die, and
KILL_ONCE=PATH only the first time (the file at PATH records the kill, so the ranks that
torchrun --max-restarts starts again run on unharmed).
"""

import os
import runpy
import signal
import sys
from pathlib import Path

import selfmem.infer.generate
import selfmem.lift.pipeline
import selfmem.retrieve.memory
import selfmem.train.loop
from selfmem.lift.state import RunState

STAGE = None  # set from the command line (not on import: bench/faults.py imports KILL_POINTS)
current = {"stage": None}


def track_stages() -> None:
    run = RunState.run

    def tracked(self, name, inputs, outputs, work):
        def work_in_stage():
            current["stage"] = name
            return work()
        return run(self, name, inputs, outputs, work_in_stage)

    RunState.run = tracked


def kill_after(owner, attribute: str, calls: int, once: Path | None = None) -> None:
    """SIGKILL this process once ``owner.attribute`` has returned ``calls`` times inside STAGE;
    with ``once``, only if that file does not exist yet (it is created first)."""
    real, count = getattr(owner, attribute), [0]

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if current["stage"] == STAGE:
            count[0] += 1
            if count[0] == calls and not (once and once.exists()):
                if once:
                    once.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, attribute, wrapper)


KILL_POINTS = {
    "tokenizer": (selfmem.lift.pipeline, "prepare_run_tokenizer", 1),  # saved, not recorded as done
    "retrieval": (selfmem.retrieve.memory, "merge_shards", 1),  # train memory written, dev not
    "generator": (selfmem.train.loop, "_save_checkpoint", 2),  # mid-training, after a checkpoint
    "round_0": (selfmem.lift.pipeline, "generate", 1),  # dev hypotheses written, test not
    "selector_candidates": (selfmem.infer.generate.Generator, "decode", 2),  # mid-decoding
    "selector": (selfmem.train.loop, "_save_checkpoint", 1),
    "round_1": (selfmem.lift.pipeline, "select_memories", 1),  # dev memory chosen, test not
}

if __name__ == "__main__":
    STAGE = sys.argv.pop(1)
    track_stages()
    owner, attribute, calls = KILL_POINTS[STAGE]
    rank = os.environ.get("RANK", "0")
    if os.environ.get("KILL_RANK", rank) == rank:
        once = Path(os.environ["KILL_ONCE"]) if "KILL_ONCE" in os.environ else None
        kill_after(owner, attribute, int(os.environ.get("KILL_CALLS", calls)), once)
    script = Path(__file__).resolve().parent.parent / "launch" / "lift.py"
    sys.argv = [str(script), *sys.argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
