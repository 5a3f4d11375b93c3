"""glibc heap settings for CPU inference, and a bound on the heap's resident size over a volume's windows.

By default glibc gives every large block its own mapping and returns it to the OS when freed, so each of a
window's large activations is page-faulted in again: the network runs about 2x slower than on a heap that
keeps them. :func:`tune_allocator` therefore splits the work in two. Inside :func:`network_heap` (a window's
forward pass) large blocks stay on the heap, which is never trimmed automatically; outside it (the build of
a compiled network, the blending buffers, pre- and post-processing) a block from 1 MiB up that the heap's
free space cannot hold gets a mapping of its own, which goes back to the OS when freed.

The windows then need the same heap every time, as long as nothing stays behind in the holes a window's
freed activations leave. glibc's per-thread cache ("tcache") does leave something: it keeps up to 7 freed
blocks of each small size (to about 1 KiB: tensor bookkeeping, Python objects) without merging them with
their free neighbours, so a few hundred bytes split a 162 MiB hole in two, the next window's large blocks
no longer fit and the heap grows. Measured in the 256x256x160 benchmark (exact mode, full-size network):
the heap 1.12 -> 1.3-1.5 GiB over the windows and a peak of 2.84 GiB with the cache, a steady 1.26 GiB and
2.41 GiB without it. glibc reads that setting only when a process starts (``GLIBC_TUNABLES``), so
:func:`child_environment` sets it for the Slicer module's child, and the CLI's ``segment`` command starts
itself again with it (:func:`restart_command`). The setting is taken off the environment once read
(:func:`tune_allocator`), so the compilers that TorchInductor starts keep glibc's defaults.

No torch import here: the Slicer module reads :func:`child_environment` without loading the engine.
"""
import contextlib
import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from .switches import switched_on

TRIM_SWITCH = "UXNET_TRIM"
# Resident growth past the settled level that makes HeapTrimmer give the heap's free pages back.
TRIM_GROWTH_BYTES = 192 << 20
# Windows after which the heap's layout has settled (measured: its resident level stops rising after 2-3).
TRIM_SETTLE_WINDOWS = 3
# Outside network_heap, blocks from this size up that the heap's free space cannot hold get mappings of their own.
MAPPED_FROM_BYTES = 1 << 20
MAPPINGS_MAX = 1 << 16  # glibc's default limit on the number of such mappings
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters
TUNABLES_ENV = "GLIBC_TUNABLES"
NO_THREAD_CACHE = "glibc.malloc.tcache_count=0"  # see the module's docstring
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


def glibc() -> bool:
    """True where the C library is glibc (whose settings this module knows)."""
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def with_heap_tunables(current: Optional[str]) -> Optional[str]:
    """``GLIBC_TUNABLES`` for an engine process: ``current`` plus glibc's per-thread cache off, or None where
    ``current`` already has it (or chooses its own size for that cache, which is left alone)."""
    items = [item for item in (current or "").split(":") if item]
    if any(item.split("=")[0] == NO_THREAD_CACHE.split("=")[0] for item in items):
        return None
    return ":".join(items + [NO_THREAD_CACHE])


def _forget_heap_tunables() -> None:
    """Take our item off ``GLIBC_TUNABLES`` (glibc has read it): processes this one starts keep the defaults."""
    items = [item for item in os.environ.get(TUNABLES_ENV, "").split(":") if item and item != NO_THREAD_CACHE]
    if items:
        os.environ[TUNABLES_ENV] = ":".join(items)
    else:
        os.environ.pop(TUNABLES_ENV, None)


def tune_allocator() -> bool:
    """Set glibc up as the module's docstring says (Linux only); True if it took effect. Same results, faster."""
    global _tuned
    libc = _libc()
    if libc is None:
        return False
    _forget_heap_tunables()
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


class HeapUsage(NamedTuple):
    span: int      # bytes glibc's heaps hold from the system (all arenas)
    in_use: int    # of those, in blocks handed out
    free: int      # of those, free
    mapped: int    # bytes in blocks with mappings of their own


def heap_usage() -> Optional[HeapUsage]:
    """glibc's own account of the heap (``mallinfo2``, glibc 2.33+), or None where unavailable."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is None:
        return None
    fn.restype = _MallInfo2
    m = fn()
    return HeapUsage(m.arena, m.uordblks, m.fordblks, m.hblkhd)


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


def _tunables_to_start_with() -> Optional[str]:
    """``GLIBC_TUNABLES`` for a new engine process, or None where this process's value will do (or not glibc)."""
    return with_heap_tunables(os.environ.get(TUNABLES_ENV)) if glibc() else None


def child_environment() -> dict:
    """Environment variables for a child process that runs the engine (it tunes its allocator itself)."""
    env = {"PYTHONUNBUFFERED": "1"}  # progress lines arrive as they are printed
    tunables = _tunables_to_start_with()
    if tunables is not None:
        env[TUNABLES_ENV] = tunables
    return env


def restart_command(args: List[str]) -> Optional[Tuple[List[str], Dict[str, str]]]:
    """For the CLI: the command line and environment that run ``python -m UXNetSegmentLib *args`` again with
    the heap settings that glibc reads at start-up, or None where this process has them already, or
    where the C library is not glibc."""
    tunables = _tunables_to_start_with()
    if tunables is None:
        return None
    env = dict(os.environ)
    env[TUNABLES_ENV] = tunables
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return [sys.executable, "-m", "UXNetSegmentLib"] + list(args), env


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
