"""Freed CPU memory kept for reuse: a step's tensors fault no pages in once the settings are on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Five tensors of about 2.5 MB alive at once, then all freed, 100 times (a decoding step's
# pattern), each step's a page (4 KiB) larger than the last, as a search's cache grows; prints
# the page faults of the 100 steps after 10 steps of warm-up.
STEPS = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from selfmem.common.cpu_memory import keep_freed_memory
if {keep}:
    assert keep_freed_memory()
def step(i):
    tensors = [torch.ones(640_000 + 1024 * i) for _ in range(5)]
for i in range(10):
    step(i)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(10, 110):
    step(i)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(keep: bool) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS.format(repo=str(REPO), keep=keep)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings (Linux only)")
def test_freed_memory_is_reused_without_page_faults():
    # glibc's defaults: a block larger than any freed before is mapped anew, every page of it
    # faulted in (5 x 100 blocks of 640-740 pages: 342,750 here); whether a freed heap top is
    # handed back too varies from run to run, so the steps grow to make the defaults' cost sure
    assert page_faults(keep=False) > 100_000
    # kept: a step reuses the last step's pages and touches at most one new page a tensor
    # (500 in all; 300-500 measured), with room for a few of Python's own
    assert page_faults(keep=True) < 2_000


# 300 tensors of about 1 MB alive at once, then freed: kept, the heap holds them; released,
# the kernel has them back. Prints the resident set (KiB) after freeing and after releasing.
RELEASE = """
import sys, torch
sys.path.insert(0, {repo!r})
from selfmem.common.cpu_memory import keep_freed_memory, release_freed_memory
def resident():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
assert keep_freed_memory()
tensors = [torch.ones(250_000 + i) for i in range(300)]
del tensors
kept = resident()
assert not release_freed_memory(limit=1 << 30)  # less than a GiB resident and not in use: kept
assert resident() > kept - 10_000
assert release_freed_memory(limit=200 << 20)  # more than 200 MiB: handed back
print(kept, resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim (Linux only)")
def test_released_memory_goes_back_to_the_kernel():
    out = subprocess.run([sys.executable, "-c", RELEASE.format(repo=str(REPO))], capture_output=True, text=True,
                         check=True)
    kept, released = map(int, out.stdout.split())
    assert kept - released > 250_000  # of the 300 MB freed, more than 250 MB handed back
