"""Freed CPU memory kept for reuse: a step's tensors fault no pages in once the settings are on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Five 2.5 MB tensors alive at once, then all freed, 100 times (a decoding step's pattern);
# prints the page faults of the 100 steps after 10 steps of warm-up.
STEPS = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from selfmem.common.cpu_memory import keep_freed_memory
if {keep}:
    assert keep_freed_memory()
def step():
    tensors = [torch.ones(640_000) for _ in range(5)]
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(keep: bool) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS.format(repo=str(REPO), keep=keep)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings (Linux only)")
def test_freed_memory_is_reused_without_page_faults():
    # glibc's defaults return the freed heap top each step (about 2,500 faults a step here);
    # the pattern must show that, or the second assertion would prove nothing
    assert page_faults(keep=False) > 100 * 1000
    assert page_faults(keep=True) == 0
