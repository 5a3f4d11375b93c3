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


def _linear_predictor(classes: int, seed: int = 0):
    """Logits a_c * intensity + b_c: cheap, deterministic, and different for every class."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(classes, generator=g) * 8, torch.randn(classes, generator=g)
    return lambda w: a.view(1, -1, 1, 1, 1) * w + b.view(1, -1, 1, 1, 1)


def _captured_store(monkeypatch):
    import UXNetSegmentLib.pipeline as pipeline
    made = []

    class Capturing(pipeline.SlabStore):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pipeline, "SlabStore", Capturing)
    return made


def _stored_bytes(store) -> int:
    return sum(t.numel() * t.element_size() for t in (store.index, store.prob, store.uncertainty) if t is not None)


@pytest.mark.parametrize("spacing", [None, [1.5, 1.5, 2.0]], ids=["native", "resampled"])
def test_what_is_kept_per_voxel_does_not_grow_with_the_class_count(monkeypatch, spacing):
    """What is kept for every voxel of the volume does not grow with the class count: on a native grid the
    same 5 bytes for 5 and for 40 classes, with resampling at most 8 (class, probability) pairs plus the
    uncertainty. Only the one-window-deep blending slab holds every class."""
    from UXNetSegmentLib.pipeline import run_recipe
    image = synthetic_ct(size=(40, 36, 20))
    made = _captured_store(monkeypatch)
    sizes = {}
    for classes in (5, 40):
        spec = tiny_spec(spacing=spacing, labels={str(i): f"c{i}" for i in range(1, classes)})
        raw = run_recipe(image, spec, _linear_predictor(classes), uncertainty="entropy")
        store = made[-1]
        sizes[classes] = _stored_bytes(store)
        voxels = int(np.prod(store.shape))
        assert store.uncertainty.numel() == voxels  # one float per voxel, whatever the class count
        assert store.labels_only == (spacing is None)  # no resampling: only the final label is kept
        if spacing is None:  # 1 byte of label + 4 of uncertainty
            assert store.prob is None and sizes[classes] == voxels * (1 + 4)
        else:  # k = min(8, C) (class byte + float32 probability) + 4 of uncertainty
            assert sizes[classes] == voxels * (min(8, classes) * 5 + 4)
        assert raw.labels.max() < classes and np.isfinite(raw.uncertainty).all()
    if spacing is None:
        assert sizes[40] == sizes[5]
    if spacing is not None:  # past 8 classes, nothing more is kept
        spec = tiny_spec(spacing=spacing, labels={str(i): f"c{i}" for i in range(1, 12)})
        run_recipe(image, spec, _linear_predictor(12), uncertainty="entropy")
        assert _stored_bytes(made[-1]) == sizes[40]


def test_labels_only_store_gives_the_top_k_labels(monkeypatch):
    """On a voxel-aligned grid the 1-byte label store and the general top-k store give the same labels."""
    from UXNetSegmentLib.pipeline import run_recipe
    from UXNetSegmentLib.resample import GridMap
    image = synthetic_ct(size=(40, 36, 20), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    spec = tiny_spec(spacing=None, overlap=0.25)
    predictor = _linear_predictor(spec.num_classes)
    fast = run_recipe(image, spec, predictor, uncertainty="entropy")
    monkeypatch.setattr(GridMap, "voxel_aligned", lambda self, tol=1e-4: False)
    general = run_recipe(image, spec, predictor, uncertainty="entropy")
    assert np.array_equal(fast.labels, general.labels)
    np.testing.assert_allclose(fast.uncertainty, general.uncertainty, atol=1e-6)
