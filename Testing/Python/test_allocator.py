"""The tuned glibc allocator: a window's large tensors stay on the heap, everything else is mapped and given back,
and the heap is trimmed when it grows over windows."""
import json
import os
import subprocess
import sys

import pytest
import torch

from UXNetSegmentLib import allocator
from UXNetSegmentLib.allocator import HeapTrimmer, network_heap, release_free_heap, resident_bytes, tune_allocator
from UXNetSegmentLib.devices import Predictor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or resident_bytes() is None,
                                reason="glibc (mallopt, malloc_trim) and /proc only")
MIB = 1 << 20


def heap_free_bytes() -> int:
    """Free bytes inside glibc's heap (``mallinfo2().fordblks``)."""
    return allocator.heap_usage().free


def grow_heap(mib: int = 512) -> int:
    """Allocate, touch and free ``mib`` MiB; returns the resident bytes just after the free."""
    block = torch.ones(mib * MIB // 4)
    del block
    return resident_bytes()


def test_network_heap_keeps_freed_tensors_resident_and_everything_else_goes_back():
    assert tune_allocator()
    release_free_heap()
    before = resident_bytes()
    # Outside: its own mapping, returned when freed (glibc maps only what no free space in the heap fits).
    assert grow_heap(256 + heap_free_bytes() // MIB) - before < 64 * MIB
    with network_heap():
        with network_heap():                           # nested (flipped windows): still the heap
            grow_heap(256)
        kept = grow_heap()
    assert kept - before >= 400 * MIB                  # inside: kept on the heap for the next window
    assert grow_heap() - before >= 400 * MIB           # a block outside does not take the heap's pages back...
    assert release_free_heap()
    assert resident_bytes() - before < 64 * MIB        # ...until the heap is trimmed


def test_trimmer_trims_only_when_the_resident_set_grew_past_its_settled_level(monkeypatch):
    assert tune_allocator()
    release_free_heap()
    trimmer = HeapTrimmer(growth=256 * MIB, settle=2)
    assert trimmer.active
    assert not trimmer.after_window()          # the first windows set the settled level...
    with network_heap():
        keep = torch.ones(384 * MIB // 4)      # (a second window that ends higher than the first)
    assert not trimmer.after_window()          # ...as the highest of them: no trim while settling
    del keep
    assert not trimmer.after_window()          # at the settled level
    with network_heap():
        before = grow_heap(768)
    assert trimmer.after_window() and trimmer.trims == 1
    assert before - resident_bytes() >= 600 * MIB
    with network_heap():
        grow_heap(128)                         # less than the allowed growth: kept for the next window
    assert not trimmer.after_window()
    monkeypatch.setenv("UXNET_TRIM", "0")
    off = HeapTrimmer(growth=256 * MIB, settle=1)
    off.after_window()
    with network_heap():
        before = grow_heap(512)
    assert not off.active and not off.after_window()
    assert before - resident_bytes() < 100 * MIB
    release_free_heap()


class Allocating(torch.nn.Module):
    """Allocates and frees ``mib`` MiB in its forward pass, like a window's activations."""

    def __init__(self, mib: int = 0):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 1)
        self.mib = mib

    def forward(self, x):
        grow_heap(self.mib or 256 + heap_free_bytes() // MIB)  # default: more than the heap has free
        return self.conv(x)


def test_predictor_runs_the_network_on_the_heap():
    assert tune_allocator()
    predictor = Predictor(Allocating(512), torch.device("cpu"), compile=False)
    release_free_heap()
    before = resident_bytes()
    predictor(torch.rand(1, 1, 4, 4, 4))
    assert resident_bytes() - before >= 400 * MIB
    release_free_heap()
    Allocating()(torch.rand(1, 1, 4, 4, 4))  # the same forward outside the predictor: given back
    assert resident_bytes() - before < 64 * MIB


def test_predictor_reports_each_cpu_window_to_its_trimmer(monkeypatch):
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    predictor = Predictor(net, torch.device("cpu"), compile=False)
    calls = []
    monkeypatch.setattr(predictor.heap, "after_window", lambda: calls.append(1) or False)
    x = torch.rand(2, 1, 8, 8, 8)
    expected = net(x).detach()
    for _ in range(3):
        assert torch.equal(predictor(x), expected)
    assert len(calls) == 3


def test_the_compiled_build_is_mapped_and_does_not_set_the_trim_baseline(monkeypatch):
    """The build (tracing, constant folding, its own window) runs outside the heap, so its garbage goes back to
    the OS instead of leaving holes the windows fill only in part; the windows after it run on the heap. Its
    window is not the trimmer's baseline either (it ends lower than later windows)."""
    monkeypatch.setenv("UXNET_COMPILE", "1")
    assert tune_allocator()
    kept = []

    @torch._dynamo.disable
    def probe(x):
        """Runs eagerly inside every call, the build's included: does a freed block stay resident? (glibc maps a
        block only when no free space in the heap fits it, so the block is larger than all of that.)"""
        mib = 256 + heap_free_bytes() // MIB if not kept else 256  # the build's call: more than the heap has free
        release_free_heap()
        before = resident_bytes()
        grow_heap(mib)
        kept.append(resident_bytes() - before)
        return x

    class Probed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x):
            return probe(self.conv(x))

    predictor = Predictor(Probed().eval(), torch.device("cpu"), compile=True)
    calls = []
    monkeypatch.setattr(predictor.heap, "after_window", lambda: calls.append(1) or False)
    x = torch.rand(1, 1, 10, 10, 10)
    predictor(x)
    assert predictor.compiling and calls == []
    assert kept[-1] < 64 * MIB                 # the build: the block had its own mapping, given back
    predictor(x)
    predictor(x)
    assert len(calls) == 2
    assert kept[-1] >= 200 * MIB               # a built window: kept on the heap
    release_free_heap()


def test_winograd_slabs_stay_on_the_heap_even_in_the_build():
    """The slab operator also runs inside the compiled build, which is outside ``network_heap``; its slabs' large
    blocks stay on the heap there too (mapped afresh for every slab, they made the full-size build 6 s longer).
    Control: the same block outside the operator gets its own mapping."""
    from torch.nn import functional as F
    from UXNetSegmentLib import winograd as W
    from UXNetSegmentLib import winograd_slabs as S
    assert tune_allocator()
    release_free_heap()

    def mapped_by_a_block_larger_than_the_free_heap() -> int:
        before = allocator.heap_usage().mapped
        block = torch.ones((heap_free_bytes() + 64 * MIB) // 4)
        grew = allocator.heap_usage().mapped - before
        del block
        return grew

    grown = []

    def kernel(*args):
        grown.append(mapped_by_a_block_larger_than_the_free_heap())
        return S._slab(*args)

    torch.manual_seed(6)
    x, w = torch.randn(1, 4, 9, 8, 8), torch.randn(3, 4, 3, 3, 3)
    got = S.conv3d_slabs(x, W.transform_weight(w), None, kernel=kernel)
    want = F.conv3d(x, w, padding=1)
    assert float((got - want).abs().max()) < 2e-4 * float(want.abs().max())
    assert grown and max(grown) < MIB, grown
    assert mapped_by_a_block_larger_than_the_free_heap() >= 64 * MIB
    release_free_heap()


# glibc's per-thread cache ("tcache"), off in engine processes (see allocator's docstring). The probe frees two
# adjacent 1000-byte blocks and asks for one block of their joint size: without the cache they were merged and
# it gets their place; with it they wait in the cache, unmerged, and it must go elsewhere.
THREAD_CACHE_PROBE = r"""
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
kept = []
for _ in range(1000):
    a, b, c = libc.malloc(1000), libc.malloc(1000), libc.malloc(1000)
    kept += [a, b, c]
    if b - a == 1008 and c - b == 1008:  # side by side (1000 bytes + header, in 16-byte steps)
        break
else:
    raise SystemExit("no three adjacent blocks")
libc.free(a)
libc.free(b)
print("merged" if libc.malloc(2000) == a else "kept apart")
"""


def probe_thread_cache(extra_env: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != allocator.TUNABLES_ENV}
    env.update(extra_env)
    done = subprocess.run([sys.executable, "-c", THREAD_CACHE_PROBE], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not allocator.glibc(), reason="glibc tunables")
def test_engine_children_start_without_glibcs_thread_cache():
    env = allocator.child_environment()
    assert allocator.NO_THREAD_CACHE in env[allocator.TUNABLES_ENV].split(":")
    assert probe_thread_cache(env) == "merged"   # glibc took the setting: freed small blocks merge at once
    assert probe_thread_cache({}) == "kept apart"  # the default, as the probe's control


def test_heap_tunables_keep_what_the_user_set():
    assert allocator.with_heap_tunables(None) == "glibc.malloc.tcache_count=0"
    assert allocator.with_heap_tunables("glibc.malloc.arena_max=2") == \
        "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"
    assert allocator.with_heap_tunables("glibc.malloc.tcache_count=3") is None  # the user's own choice stays


def test_tune_allocator_keeps_the_setting_from_the_processes_it_starts(monkeypatch):
    monkeypatch.setenv(allocator.TUNABLES_ENV, "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
    tune_allocator()
    assert os.environ[allocator.TUNABLES_ENV] == "glibc.malloc.arena_max=2"
    monkeypatch.setenv(allocator.TUNABLES_ENV, "glibc.malloc.tcache_count=0")
    tune_allocator()
    assert allocator.TUNABLES_ENV not in os.environ


@pytest.mark.skipif(not allocator.glibc(), reason="glibc tunables")
def test_segment_command_starts_itself_again_with_the_heap_settings(monkeypatch, tmp_path):
    from UXNetSegmentLib import cli
    monkeypatch.delenv(allocator.TUNABLES_ENV, raising=False)
    argv = ["segment", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "out.seg.nrrd")]
    monkeypatch.setattr(sys, "argv", ["uxnet-segment"] + argv)
    execs = []

    class Replaced(Exception):
        pass

    def execve(path, command, env):  # exec would replace the test process; record what it would run
        execs.append((path, command, env))
        raise Replaced

    monkeypatch.setattr(cli.os, "execve", execve)
    with pytest.raises(Replaced):
        cli.main()
    path, command, env = execs[0]
    assert path == sys.executable and command == [sys.executable, "-m", "UXNetSegmentLib"] + argv
    assert env[allocator.TUNABLES_ENV] == allocator.NO_THREAD_CACHE
    # Started that way it runs (here: fails on the missing input with its one-line error), without a restart loop.
    monkeypatch.setenv(allocator.TUNABLES_ENV, env[allocator.TUNABLES_ENV])
    assert cli.main() == 1 and len(execs) == 1
    assert cli.main(argv) == 1 and len(execs) == 1  # called from Python: never restarted


@pytest.mark.skipif(not allocator.glibc(), reason="glibc tunables")
def test_restart_command_is_a_working_command_line(monkeypatch, tmp_path):
    monkeypatch.delenv(allocator.TUNABLES_ENV, raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the package's own folder is all it adds
    command, env = allocator.restart_command(["models", "--json"])
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "demo_brain" in [m["name"] for m in json.loads(done.stdout)]
