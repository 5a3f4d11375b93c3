"""The tuned glibc allocator: large tensors stay on the heap, and the heap is trimmed when it grows over windows."""
import sys

import pytest
import torch

from UXNetSegmentLib.devices import HeapTrimmer, Predictor, release_free_heap, resident_bytes, tune_allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or resident_bytes() is None,
                                reason="glibc (mallopt, malloc_trim) and /proc only")
MIB = 1 << 20


def grow_heap(mib: int = 512) -> int:
    """Allocate, touch and free ``mib`` MiB on the tuned heap; returns the resident bytes just after the free."""
    block = torch.ones(mib * MIB // 4)
    del block
    return resident_bytes()


def test_tuned_heap_keeps_freed_tensors_resident_until_released():
    assert tune_allocator()
    before = grow_heap()
    assert release_free_heap()
    assert before - resident_bytes() >= 400 * MIB


def test_trimmer_trims_only_when_the_resident_set_grew_past_its_lowest(monkeypatch):
    assert tune_allocator()
    release_free_heap()
    trimmer = HeapTrimmer(growth=256 * MIB)
    assert trimmer.active
    assert not trimmer.after_window()          # the first window sets the baseline
    assert not trimmer.after_window()          # no growth
    before = grow_heap(512)
    assert trimmer.after_window() and trimmer.trims == 1
    assert before - resident_bytes() >= 400 * MIB
    grow_heap(128)                             # less than the allowed growth: kept for the next window
    assert not trimmer.after_window()
    monkeypatch.setenv("UXNET_TRIM", "0")
    off = HeapTrimmer(growth=256 * MIB)
    off.after_window()
    before = grow_heap(512)
    assert not off.active and not off.after_window()
    assert before - resident_bytes() < 100 * MIB


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


def test_the_window_that_builds_the_compiled_network_does_not_set_the_trim_baseline(monkeypatch):
    """The build's window ends lower than later windows (its leftovers are elsewhere); as the baseline it
    would make every later window trim (and pay the page faults of refilling the heap)."""
    monkeypatch.setenv("UXNET_COMPILE", "1")
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.GELU()).eval()
    predictor = Predictor(net, torch.device("cpu"), compile=True)
    calls = []
    monkeypatch.setattr(predictor.heap, "after_window", lambda: calls.append(1) or False)
    x = torch.rand(1, 1, 10, 10, 10)
    predictor(x)
    assert predictor.compiling and calls == []
    predictor(x)
    predictor(x)
    assert len(calls) == 2
