"""glibc heap settings for CPU inference, and a bound on the heap's resident size over a volume's windows.

By default glibc gives every large block its own mapping and returns it to the OS when freed, so each of a
window's large activations is page-faulted in again: the network runs about 2x slower than on a heap that
keeps them. :func:`tune_allocator` therefore splits the work in two. Inside :func:`network_heap` (a window's
forward pass) large blocks stay on the heap, which is never trimmed automatically; everything else (the
build of a compiled network, the blending buffers, pre- and post-processing) gets mappings of its own from
1 MiB up, and those go back to the OS when freed. The windows then find the same heap every time instead of
one holed by blocks of other sizes: in the 256x256x160 benchmark the heap spanned 2.47 GiB for 0.7 GiB in use
when everything shared it.

No torch import here: the Slicer module reads :func:`child_environment` without loading the engine.
"""
import contextlib
import ctypes
import functools
import os
import sys
from typing import Iterator, Optional

from .switches import switched_on

TRIM_SWITCH = "UXNET_TRIM"
# Resident growth past the settled level that makes HeapTrimmer give the heap's free pages back.
TRIM_GROWTH_BYTES = 192 << 20
# Windows after which the heap's layout has settled (measured: its resident level stops rising after 2-3).
TRIM_SETTLE_WINDOWS = 3
# Outside network_heap, blocks from this size up get mappings of their own.
MAPPED_FROM_BYTES = 1 << 20
MAPPINGS_MAX = 1 << 16  # glibc's default limit on the number of such mappings
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters
_tuned = False
_heap_depth = 0


@functools.lru_cache(maxsize=None)
def _libc() -> Optional[ctypes.CDLL]:
    """glibc, loaded once (``network_heap`` asks for it around every window), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def tune_allocator() -> bool:
    """Set glibc up as the module's docstring says (Linux only); True if it took effect. Same results, faster."""
    global _tuned
    libc = _libc()
    if libc is None:
        return False
    _tuned = (bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MAPPED_FROM_BYTES))
              and bool(libc.mallopt(M_MMAP_MAX, 0 if _heap_depth else MAPPINGS_MAX)))
    return _tuned


def allocator_tuned() -> bool:
    return _tuned


@contextlib.contextmanager
def network_heap() -> Iterator[None]:
    """Inside, large blocks stay on the heap (a window's forward pass); see the module's docstring."""
    global _heap_depth
    libc = _libc() if _tuned else None
    if libc is None:
        yield
        return
    _heap_depth += 1
    libc.mallopt(M_MMAP_MAX, 0)
    try:
        yield
    finally:
        _heap_depth -= 1
        if not _heap_depth:
            libc.mallopt(M_MMAP_MAX, MAPPINGS_MAX)


def resident_bytes() -> Optional[int]:
    """This process's resident set now (Linux ``/proc/self/statm``), or None where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``); True if any were."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def child_environment() -> dict:
    """Environment variables for a child process that runs the engine (it tunes its allocator itself)."""
    return {"PYTHONUNBUFFERED": "1"}  # progress lines arrive as they are printed


class HeapTrimmer:
    """Bounds the heap's resident size over a volume's windows, at the cost of an occasional page-fault pass.

    The heap keeps freed activations resident (that is what saves the page faults). The windows' resident
    level rises over the first few windows and then stays, but it used to creep up over long runs
    (256x256x160: 3.00 GiB after 14 windows, 3.22 GiB after 75, against 2.3-2.6 GiB for the first).
    :meth:`after_window` takes the highest resident set after the first ``settle`` windows as the settled
    level, and trims the heap when a later window ends ``growth`` bytes above it. Trimming after every
    window instead costs 8-15% per window (the next window faults its whole working set back in). Only where
    :func:`tune_allocator` took effect; ``UXNET_TRIM=0`` switches it off."""

    def __init__(self, growth: int = TRIM_GROWTH_BYTES, settle: int = TRIM_SETTLE_WINDOWS):
        self.growth = growth
        self.settle = settle
        self.windows = 0
        self.baseline: Optional[int] = None
        self.trims = 0
        self.active = _tuned and switched_on(TRIM_SWITCH) and resident_bytes() is not None

    def after_window(self) -> bool:
        """Call after each window's tensors are freed (not after the window that built a compiled network);
        True if it trimmed."""
        if not self.active:
            return False
        now = resident_bytes()
        self.windows += 1
        if self.windows <= self.settle:
            self.baseline = now if self.baseline is None else max(self.baseline, now)
            return False
        if now - self.baseline < self.growth or not release_free_heap():
            return False
        self.trims += 1
        return True
