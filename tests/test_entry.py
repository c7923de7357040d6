"""The launch scripts' entry point: a failed run ends with one line ``error: <message>``,
on every rank and in torchrun's summary; the process group gets ``dist.timeout``."""

import json
import subprocess
import sys
import time

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from conftest import DEMO_CONFIG, REPO, start_torchrun
from selfmem.common import entry
from selfmem.common.config import ConfigError
from selfmem.common.data import DataError
from selfmem.common.distributed import RankFailed
from selfmem.common.entry import entry_point, error_line, launch

# record() enables faulthandler on stderr, which pytest's capture gives no file descriptor
pytestmark = pytest.mark.filterwarnings("ignore:Unable to enable fault handler")


@pytest.mark.parametrize("exc, line", [
    (ConfigError("override 'train.lr=x': 'train.lr': expected float, got 'x'"),
     "error: override 'train.lr=x': 'train.lr': expected float, got 'x'"),
    (DataError("data/dev.jsonl:3: missing field 'src' (fields present: trg)"),
     "error: data/dev.jsonl:3: missing field 'src' (fields present: trg)"),
    (RankFailed("rank 0 failed: OSError: No space left on device"),
     "error: rank 0 failed: OSError: No space left on device"),
    (FileNotFoundError("runs/x/tokenizer: no tokenizer"), "error: runs/x/tokenizer: no tokenizer"),
    (KeyError("memories"), "error: KeyError: 'memories'"),  # a bug: the type is part of the message
    (ValueError("two\nlines"), "error: two lines"),
])
def test_error_line(exc, line):
    assert error_line(exc) == line


def fail_with(exc):
    def main():
        raise exc
    return main


def test_a_data_error_ends_with_its_line_and_reaches_torchruns_summary(tmp_path, monkeypatch, capsys):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))  # as torchrun sets it for each rank
    with pytest.raises(SystemExit) as info:
        entry_point(fail_with(DataError("data/dev.jsonl:3: empty line")))
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: data/dev.jsonl:3: empty line\n"  # no traceback
    assert json.loads(error_file.read_text())["message"]["message"] == "error: data/dev.jsonl:3: empty line"
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(error_file))
    summary = ChildFailedError("launch/lift.py", {0: failure}).format_msg().strip().splitlines()
    assert summary[-2] == "  traceback : error: data/dev.jsonl:3: empty line"
    assert set(summary[-1]) == {"="}


def test_a_bug_prints_its_traceback_then_the_error_line(capsys):
    with pytest.raises(SystemExit):
        entry_point(fail_with(KeyError("memories")))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert err[-2:] == ["KeyError: 'memories'", "error: KeyError: 'memories'"]


def test_launch_keeps_freed_memory_and_joins_the_process_group_with_dist_timeout(tmp_path, monkeypatch):
    timeouts, stages, kept = [], [], []
    monkeypatch.setattr(entry, "keep_freed_memory", lambda: kept.append(True))
    monkeypatch.setattr(entry, "init_distributed", lambda timeout_s: timeouts.append(timeout_s) or real_env)
    real_env = entry.DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    monkeypatch.setattr(sys, "argv", ["x.py", "--config", str(DEMO_CONFIG), f"run.root={tmp_path}",
                                      "dist.timeout=7"])
    launch("A test launcher.", lambda config, env, paths, args: stages.append((config.dist.timeout, paths.root)))
    assert kept == [True]
    assert timeouts == [7.0]
    assert stages == [(7.0, tmp_path / "demo")]


@pytest.mark.parametrize("override, precision", [([], "tf32"), (["run.tf32=false"], "ieee")])
def test_launch_sets_the_gpus_fp32_products_from_run_tf32(tmp_path, monkeypatch, override, precision):
    monkeypatch.setattr(entry, "keep_freed_memory", lambda: None)
    monkeypatch.setattr(entry, "init_distributed", lambda timeout_s: entry.DistEnv(0, 1, 0, 1))
    monkeypatch.setattr(sys, "argv", ["x.py", "--config", str(DEMO_CONFIG), f"run.root={tmp_path}", *override])
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        seen = []
        launch("A test launcher.", lambda config, env, paths, args: seen.append(matmul.fp32_precision))
        assert seen == [precision]
    finally:
        matmul.fp32_precision = before


def test_lift_with_a_missing_data_dir_ends_with_the_data_loaders_message(tmp_path):
    missing = tmp_path / "missing"
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "lift.py"), "--config", str(DEMO_CONFIG),
                           f"run.root={tmp_path}", f"data.dir={missing}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (f"error: {missing}/train.jsonl: dataset file not found "
                                            f"(data.dir is {missing})")
    assert "Traceback" not in proc.stderr


def test_a_rank_0_failure_ends_both_ranks_with_its_cause(tmp_path):
    blocker = tmp_path / "a_file"  # run.root below a file: rank 0 cannot create the run directory
    blocker.write_text("")
    started = time.monotonic()
    (proc,) = start_torchrun("launch/retrieve.py", ["--config", str(DEMO_CONFIG), f"run.root={blocker}/runs"])
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1
    assert time.monotonic() - started < 60  # not a 30-minute wait for the collective's timeout
    cause = f"[Errno 20] Not a directory: '{blocker}/runs/demo'"
    lines = out.splitlines()
    assert f"error: {cause}" in lines  # rank 0
    assert f"error: rank 0 failed: NotADirectoryError: {cause}" in lines  # rank 1
    # torchrun's summary names the cause (torch elastic's record), not "error_file: <N/A>"
    root_cause = out[out.index("Root Cause (first observed failure):"):]
    assert "error: " in root_cause and "<N/A>" not in root_cause
