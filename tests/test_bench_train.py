"""bench/train.py, the script behind the GPU checks' training figures (`bench/gpu_train.sh`,
`bench/gpu_checks.sh`), run on a CPU in miniature: a session lent a GPU for a few minutes must
not be the first to find it broken. (On 2026-12-05 it was: the bench shortened its task's dev
set after the task had batched it, and every run ended in an IndexError at its closing
evaluation.)"""

import re
import subprocess
import sys

from conftest import DEMO_CONFIG, DEMO_DATA, REPO, TINY, _env

from selfmem.models.linear import TRAINS_ON_ONEDNN


def test_the_training_bench_times_its_runs_and_compares_the_new_paths_with_the_old(tmp_path):
    command = [sys.executable, "bench/train.py", "--config", str(DEMO_CONFIG), "--steps", "2", "--repeats", "1",
               "--no-baseline", "--run-root", str(tmp_path), f"data.dir={DEMO_DATA}", *TINY]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = {match[1]: match for match in re.finditer(
        r"^(ours fp32(?:, old paths|, no oneDNN|, oneDNN)?) +(\d+) tokens/s(?:  \((\d+\.\d\d)x old paths)?", result.stdout, re.M)}
    default, other = ("oneDNN", "ours fp32, no oneDNN") if TRAINS_ON_ONEDNN else ("PyTorch", "ours fp32, oneDNN")
    assert f"training's products {default}'s by default" in result.stdout  # and the extra run takes the other path
    assert set(summary) == {"ours fp32, old paths", "ours fp32", other}, result.stdout[-3000:]
    assert all(int(match[2]) > 0 for match in summary.values())
    old, new = int(summary["ours fp32, old paths"][2]), int(summary["ours fp32"][2])
    assert abs(float(summary["ours fp32"][3]) - new / old) < 0.01  # the ratio of the medians, printed rounded
