"""Freed CPU memory kept in the process for the next tensors (glibc's malloc settings).

PyTorch's CPU tensors come from ``malloc``. By default glibc hands memory back to the
kernel soon after it is freed (a block larger than any freed before is mapped on its own and
unmapped when freed; the top of the heap goes back once enough of it is free), and the next
tensor faults its pages in again, one page at a time. A decoding step allocates and frees the same tensors over and over (the logits of 80
beams are 2.5 MB): on this project's 2-core CPU machine, 50,000 page faults in a
200-example beam search, about 2.4 us each. A loop whose tensor sizes keep changing
(training) hands the freed memory back when too much of it is resident
(``release_freed_memory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap
TOP_PAD = 64 << 20  # the heap grows 64 MiB at a time
NEVER_TRIM = 2**31 - 1


@functools.cache  # find_library runs ldconfig: milliseconds, too slow for every training step
def _libc():
    """glibc, or None where there is none (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for later allocations instead of returning it.

    Blocks up to 32 MiB then come from the heap, and the heap is not trimmed: a step's
    tensors reuse the last step's pages, already mapped. The cost: the process's resident
    memory stays at its peak (as PyTorch's CUDA allocator keeps GPU memory). Returns whether
    the settings took; False where the C library has no ``mallopt`` (musl, macOS).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the trim threshold also freezes glibc's own sliding mmap threshold, so that one is set too
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_TOP_PAD, TOP_PAD)))


class _Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc 2.33 and newer)."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


# resident bytes not in use that ``release_freed_memory`` lets be: each release costs the next
# steps their page faults (with 1 GiB the results driver's training ran 10% slower, releasing
# every dozen steps; releasing every 50 steps cost nothing measurable, its peaks 5.3 GB)
FREED_RESIDENT_LIMIT = 3 << 30


def _resident_not_in_use(libc) -> int | None:
    """Resident bytes beyond what malloc has in use, roughly (the process's code counts too);
    None without ``mallinfo2``."""
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return resident - info.uordblks - info.hblkhd


def release_freed_memory(limit: int = FREED_RESIDENT_LIMIT) -> bool:
    """Hand the heap's freed memory back to the kernel (glibc's ``malloc_trim``) once more than
    ``limit`` bytes of the process's resident memory are not in use (0: now).

    With ``keep_freed_memory`` the heap is never trimmed, and a training loop's tensors,
    whose sizes change with every batch, leave freed blocks the next sizes do not fit: the
    heap grows (seen: 7.3 GB resident per rank after 790 steps of ``libreoffice_ende``, 1.9
    GB of it in use; some 60 MB a step). The training loop calls this after every step (a
    check costs tens of microseconds); the steps after a release fault their pages in again.
    Returns whether memory was released; False without glibc.
    """
    libc = _libc()
    malloc_trim = getattr(libc, "malloc_trim", None)
    if malloc_trim is None:
        return False
    if limit > 0 and (unused := _resident_not_in_use(libc)) is not None and unused <= limit:
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return malloc_trim(0) == 1
