"""The streamed recipe against the plain MONAI recipe, on small cases with tiny networks."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine_helpers import rotation_direction, synthetic_ct, tiny_network, tiny_spec
from UXNetSegmentLib.api import segment_image
from UXNetSegmentLib.errors import Cancelled
from UXNetSegmentLib.progress import CancelToken
from UXNetSegmentLib.reference import reference_probabilities, reference_segment
from UXNetSegmentLib.resample import ijk_to_ras


def labels_of(result):
    return sitk.GetArrayFromImage(result.labels)


@pytest.mark.parametrize("direction", [None, rotation_direction(25.0, axis=0), (-1, 0, 0, 0, 0, 1, 0, -1, 0)])
def test_exact_mode_equals_plain_official_path(direction):
    image = synthetic_ct(size=(44, 38, 26), spacing=(0.8, 1.1, 2.6), direction=direction)
    spec = tiny_spec(spacing=[1.5, 1.5, 2.0], overlap=0.5)
    net = tiny_network()
    ours = labels_of(segment_image(image, spec, network=net, device="cpu"))
    plain = sitk.GetArrayFromImage(reference_segment(image, spec, net, sw_batch_size=4))
    assert (ours == plain).mean() >= 0.999


def test_no_resampling_is_exact(monkeypatch):
    """The streaming window, blending and label store add no error of their own: with the network run in
    the same layout as the plain path (standard NCDHW), the labels are identical."""
    monkeypatch.setenv("UXNET_CHANNELS_LAST", "0")
    image = synthetic_ct(size=(40, 36, 20), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    spec = tiny_spec(spacing=None, overlap=0.25)
    net = tiny_network(seed=3)
    ours = labels_of(segment_image(image, spec, network=net, device="cpu"))
    plain = reference_probabilities(image, spec, net).argmax(0).transpose(2, 1, 0)
    assert np.array_equal(ours, plain)


def test_uncertainty_is_bounded_and_on_grid():
    image = synthetic_ct()
    result = segment_image(image, tiny_spec(), network=tiny_network(), device="cpu", uncertainty=True)
    unc = sitk.GetArrayFromImage(result.uncertainty)
    assert result.uncertainty.GetSize() == image.GetSize()
    assert result.uncertainty.GetOrigin() == image.GetOrigin()
    assert unc.min() >= 0 and unc.max() <= 1.0 + 1e-6 and unc.max() > 0


def test_progress_reports_every_window_and_cancel_stops():
    image = synthetic_ct()
    events = []
    segment_image(image, tiny_spec(overlap=0.5), network=tiny_network(), device="cpu",
                  progress=lambda s, f, d: events.append((s, f, d)))
    windows = [d for s, f, d in events if s == "inference"]
    total = int(windows[-1].split("/")[1])
    assert len(windows) == total and windows[0] == f"window 1/{total}"
    assert [s for s, _, _ in events].index("preprocess") < [s for s, _, _ in events].index("postprocess")

    token = CancelToken()

    def cancel_after_first(stage, fraction, detail):
        if stage == "inference":
            token.cancel()
    with pytest.raises(Cancelled):
        segment_image(image, tiny_spec(overlap=0.5), network=tiny_network(), device="cpu",
                      progress=cancel_after_first, cancel=token)


def test_tta_and_fast_mode_run_and_mostly_agree():
    image = synthetic_ct()
    net = tiny_network()
    exact = labels_of(segment_image(image, tiny_spec(), network=net, device="cpu"))
    tta = labels_of(segment_image(image, tiny_spec(), network=net, device="cpu", tta=True))
    fast = labels_of(segment_image(image, tiny_spec(), network=net, device="cpu", fast=True))
    assert tta.shape == exact.shape and fast.shape == exact.shape
    assert (fast == exact).mean() > 0.9


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from UXNetSegmentLib.errors import UXNetError
    with pytest.raises(UXNetError, match="no CUDA GPU"):
        segment_image(synthetic_ct(), tiny_spec(), network=tiny_network(), device="cuda")


def test_percentile_recipe_and_affine_helper():
    image = synthetic_ct(direction=rotation_direction(10))
    spec = tiny_spec(intensity_window=None, intensity_percentiles=[1, 99])
    net = tiny_network()
    ours = labels_of(segment_image(image, spec, network=net, device="cpu"))
    plain = sitk.GetArrayFromImage(reference_segment(image, spec, net))
    assert (ours == plain).mean() >= 0.999
    ras = ijk_to_ras(image) @ np.array([1, 2, 3, 1.0])
    lps = image.TransformIndexToPhysicalPoint((1, 2, 3))
    assert np.allclose(ras[:3], [-lps[0], -lps[1], lps[2]])


def test_cuda_out_of_memory_retries_smaller_then_cpu():
    from UXNetSegmentLib.devices import run_with_fallback
    calls, notes = [], []

    def run(device, batch):
        calls.append((device.type, batch))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "ok"

    result = run_with_fallback(run, torch.device("cuda"), 4, progress=lambda s, f, d: notes.append((s, d)))
    assert result == "ok"
    assert calls == [("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert any("falling back to the CPU" in d for s, d in notes if s == "warning")


def test_kept_memory_does_not_grow_with_class_count():
    """What is kept per processed voxel (top-k classes + uncertainty) is the same for 9 or 40 classes."""
    from UXNetSegmentLib.slabs import SlabStore

    def kept_bytes(classes):
        store = SlabStore((20, 16, 12), classes, uncertainty="entropy")
        return sum(t.numel() * t.element_size() for t in (store.index, store.prob, store.uncertainty))

    assert kept_bytes(9) == kept_bytes(40) == kept_bytes(16)
    store = SlabStore((4, 3, 2), 40, uncertainty="entropy")
    logits = torch.randn(40, 4, 3, 2)
    store(0, logits)
    full = torch.softmax(logits, 0)
    assert torch.equal(store.index[0].long(), full.argmax(0))
    assert torch.allclose(store.prob[0], full.max(0).values)
    entropy = -(full * full.log()).sum(0) / np.log(40)
    assert torch.allclose(store.uncertainty, entropy, atol=1e-5)
