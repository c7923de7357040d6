"""results/gpu_translation.sh on a CPU, on the demo data from its shipped generators: joint's
lift first, the systems that share its generator once its round 0 is done, every driver's
exit status logged, the report written from the stages that finished, a deadline that stops
the drivers and still leaves the report and the tarball of the runs' small files."""

import os
import subprocess
import sys
import tarfile
import time

import pytest
from conftest import DEMO_CONFIG, DEMO_DATA, REPO, _env

from selfmem.common.io import read_jsonl

# the demo's shipped generators (not trained further), 20 examples a split, one round
SMALL = ["--config", str(DEMO_CONFIG), "train.max_epochs=0", "data.max_examples=20", "candidates.num_beams=4",
         "candidates.num_return=4", "candidates.hypothesis_beams=2", "lift.max_rounds=1"]


def run_script(tmp_path, *extra, **variables):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    if not (data / "libreoffice_ende_tm").exists():
        (data / "libreoffice_ende_tm").symlink_to(DEMO_DATA)
    env = dict(_env(), CORPORA=str(data), ROOT=str(tmp_path / "runs"), OUT=str(tmp_path / "out"), **variables)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]])  # its python3: this one
    return subprocess.run(["bash", str(REPO / "results" / "gpu_translation.sh"), *SMALL, *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_systems_run_in_order_and_the_report_and_runs_come_back(tmp_path):
    done = run_script(tmp_path, FORKS="", LATER="topb4 upper")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    started = [line.split("] ")[1] for line in lines if line.endswith(": started")]
    assert started[0] == "joint: started" and sorted(started[1:]) == ["topb4: started", "upper: started"]
    assert sorted(line.split("] ")[1].split(" after ")[0] for line in lines if ": exit " in line) == \
        ["joint: exit 0", "topb4: exit 0", "upper: exit 0"]
    report = (tmp_path / "out" / "results_translation_gpu.md").read_text()
    for row in ("| Transformer (no memory) |", "| Transformer-Joint (BM25 memory, round 0) | 0 |",
                "| Selfmem Joint | 1 |", "| Selfmem Joint, Top-B (B = 4) | 1 |", "| upper bound"):
        assert row in report
    with tarfile.open(tmp_path / "out" / "gpu_translation_runs.tgz") as runs:
        names = set(runs.getnames())
    assert {"./tm/joint/state.json", "./tm/joint/round_1/hyps/test.txt", "./tm/topb4/round_1/memory/dev.jsonl",
            "./tm/upper/round_0/hyps/test.txt", "logs/joint.log", "logs/topb4.log"} <= names
    assert not [n for n in names if "/candidates/" in n or n.endswith((".safetensors", ".pt", ".model"))]


def test_the_deadline_stops_the_drivers_and_the_report_is_still_written(tmp_path):
    stopped = run_script(tmp_path, DEADLINE="3", FORKS="dual", LATER="upper")
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "stopped: exit 124 (124: the deadline, 3 s)" in stopped.stdout
    assert (tmp_path / "out" / "results_translation_gpu.md").read_text().startswith("# Translation results")
    with tarfile.open(tmp_path / "out" / "gpu_translation_runs.tgz") as runs:
        assert "logs/joint.log" in runs.getnames()
    for _ in range(40):  # no driver outlives the deadline (a killed one may take a moment to go)
        left = subprocess.run(["pgrep", "-f", str(tmp_path / "runs")], capture_output=True, text=True).stdout
        if not left:
            break
        time.sleep(0.25)
    assert left == ""


@pytest.mark.parametrize("variable, value, message", [
    ("FORKS", "topb4", "error: FORKS takes systems with generators of their own (dual augment copy slots close), "
                       "not 'topb4'"),
    ("LATER", "dual", "error: LATER takes topb4 and upper, not 'dual'"),
    ("DEADLINE", "10m", "error: DEADLINE is in whole seconds, got '10m'"),
    ("SEEDS", "1 two", "error: SEEDS takes whole numbers, not 'two'"),
    ("SEEDS", "3 1 3", "error: SEEDS names a seed twice: '3 1 3'"),
])
def test_bad_variables_are_refused(tmp_path, variable, value, message):
    refused = run_script(tmp_path, **{variable: value})
    assert refused.returncode == 2 and refused.stderr.strip() == message


def round_0_dev(root):
    rows = read_jsonl(root / "tm" / "joint" / "round_0" / "metrics.jsonl")
    return next(r["hyps"] for r in rows if r["split"] == "dev")


def test_seeds_run_the_experiment_once_each_and_report_across_them(tmp_path):
    prepared = tmp_path / "runs" / "tm" / "joint"  # as a CPU prepares it: here, nothing yet
    prepared.mkdir(parents=True)
    # round 0 only: quicker
    done = run_script(tmp_path, "lift.max_rounds=0", SEEDS="1 2", FORKS="", LATER="")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    for seed in (1, 2):
        run = tmp_path / "runs" / f"seed{seed}" / "tm" / "joint"
        assert f"seed: {seed}\n" in (run / "config.yaml").read_text()
        assert (out / f"seed{seed}" / "results_translation_gpu.md").read_text().startswith("# Translation results")
        with tarfile.open(out / f"seed{seed}" / "gpu_translation_runs.tgz") as runs:
            assert "./tm/joint/round_0/hyps/test.txt" in runs.getnames()
    across = (out / "results_translation_gpu_seeds.md").read_text().split("### libreoffice_ende_tm, across runs")[1]
    # no round of self memory: each seed's round 0 on dev (from its run), no best round, no mean of gains
    rows = [line.split(" | ") for line in across.splitlines() if line.startswith("| Joint |")]
    assert [(row[1], row[2], row[4]) for row in rows] == [
        (f"`{tmp_path / 'runs' / f'seed{seed}'}`", f"{round_0_dev(tmp_path / 'runs' / f'seed{seed}'):.2f}", "-")
        for seed in (1, 2)]
    exits = [line.split("] ")[1].split(" after ")[0] for line in done.stdout.splitlines() if ": exit " in line]
    assert exits == ["joint: exit 0", "joint: exit 0"]  # one a seed, each listed under its seed
    assert [line for line in done.stdout.splitlines() if line.startswith("seed ")] == ["seed 1:", "seed 2:"]
    assert (out / "seed2" / "driver.log").read_text().count("joint: started") == 1
