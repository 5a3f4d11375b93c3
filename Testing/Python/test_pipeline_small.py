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


def test_label_store_keeps_argmax_and_entropy():
    from UXNetSegmentLib.slabs import SlabStore
    store = SlabStore((4, 3, 2), 40, uncertainty="entropy")
    logits = torch.randn(40, 4, 3, 2)
    store(0, logits)
    full = torch.softmax(logits, 0)
    assert torch.equal(store.index.long(), full.argmax(0))
    entropy = -(full * full.log()).sum(0) / np.log(40)
    assert torch.allclose(store.uncertainty, entropy, atol=1e-5)


def _linear_predictor(classes: int, seed: int = 0):
    """Logits a_c * intensity + b_c: cheap, deterministic, and different for every class."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(classes, generator=g) * 8, torch.randn(classes, generator=g)
    return lambda w: a.view(1, -1, 1, 1, 1) * w + b.view(1, -1, 1, 1, 1)


def _captured(monkeypatch, name):
    import UXNetSegmentLib.pipeline as pipeline
    made = []
    base = getattr(pipeline, name)

    class Capturing(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def __call__(self, x0, logits):
            super().__call__(x0, logits)
            self.most_rows_held = max(getattr(self, "most_rows_held", 0), getattr(self, "rows_held", 0))

    monkeypatch.setattr(pipeline, name, Capturing)
    return made


def _force_corner_path(monkeypatch):
    from UXNetSegmentLib.resample import GridMap
    monkeypatch.setattr(GridMap, "axis_map", lambda self, tol=1e-4: None)


@pytest.mark.parametrize("spacing,path", [(None, "aligned"), ([1.5, 1.5, 2.0], "separable"),
                                          ([1.5, 1.5, 2.0], "corners")])
def test_what_is_kept_per_voxel_does_not_grow_with_the_class_count(monkeypatch, spacing, path):
    """Per voxel of the volume only its label byte and uncertainty float are kept, for 5 classes as for 40;
    class probabilities exist only for a bounded number of processed rows (and the blending slab)."""
    from UXNetSegmentLib.inverse_stream import BLOCK_ROWS
    from UXNetSegmentLib.inference import ROWS_PER_CALL
    from UXNetSegmentLib.pipeline import run_recipe
    if path == "corners":
        _force_corner_path(monkeypatch)
    image = synthetic_ct(size=(40, 36, 20))
    made = {name: _captured(monkeypatch, name) for name in ("SlabStore", "SeparableInverse", "StreamingInverse")}
    kept = {}
    for classes in (5, 40):
        spec = tiny_spec(spacing=spacing, labels={str(i): f"c{i}" for i in range(1, classes)})
        raw = run_recipe(image, spec, _linear_predictor(classes), uncertainty="entropy")
        assert raw.labels.max() < classes and np.isfinite(raw.uncertainty).all()
        if path == "aligned":  # no resampling: a label byte and an uncertainty float per processed voxel
            store = made["SlabStore"][-1]
            kept[classes] = store.index.nbytes + store.uncertainty.nbytes
            assert kept[classes] == int(np.prod(store.shape)) * (1 + 4)
            continue
        # resampled: per input voxel the same, and probabilities for a few rows at a time
        sink = made["SeparableInverse" if path == "separable" else "StreamingInverse"][-1]
        kept[classes] = sink.labels.nbytes + sink.unc.nbytes
        assert kept[classes] == int(np.prod(image.GetSize())) * (1 + 4)
        most = 2 if path == "separable" else BLOCK_ROWS + ROWS_PER_CALL
        assert 1 < sink.most_rows_held <= most < sink.rows + BLOCK_ROWS
    assert kept[40] == kept[5]
    counts = {name: len(v) for name, v in made.items()}
    assert counts == {name: (2 if name == {"aligned": "SlabStore", "separable": "SeparableInverse",
                                           "corners": "StreamingInverse"}[path] else 0) for name in made}


@pytest.mark.parametrize("path", ["separable", "corners"])
def test_aligned_gather_equals_the_trilinear_streaming_path(monkeypatch, path):
    """On a voxel-aligned grid the plain gather and the slab-by-slab trilinear mappings agree exactly."""
    from UXNetSegmentLib.pipeline import run_recipe
    from UXNetSegmentLib.resample import GridMap
    image = synthetic_ct(size=(40, 36, 20), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    spec = tiny_spec(spacing=None, overlap=0.25)
    predictor = _linear_predictor(spec.num_classes)
    fast = run_recipe(image, spec, predictor, uncertainty="entropy")
    monkeypatch.setattr(GridMap, "voxel_aligned", lambda self, tol=1e-4: False)
    if path == "corners":
        _force_corner_path(monkeypatch)
    general = run_recipe(image, spec, predictor, uncertainty="entropy")
    assert np.array_equal(fast.labels, general.labels)
    np.testing.assert_allclose(fast.uncertainty, general.uncertainty, atol=1e-6)


def _full_volume_interpolation(grid, prob, unc):
    """Labels and uncertainty of interpolating whole probability and uncertainty volumes at the input's
    voxels through the 8 trilinear corners at once (the reference for both streaming paths)."""
    classes = prob.shape[0]
    prob, unc = prob.reshape(classes, -1), unc.reshape(-1)
    labels, uncertainty = [], []
    for _, _, coords in grid.chunks():
        idx, w = grid.corners(coords)
        pos = torch.from_numpy(np.maximum(idx, 0))
        wt = torch.from_numpy(np.where(idx >= 0, w, 0.0).astype(np.float32))
        scores = sum(prob[:, pos[:, c]] * wt[:, c] for c in range(8))
        labels.append(scores.argmax(0).numpy().astype(np.uint8))
        uncertainty.append((unc[pos] * wt).sum(1).numpy())
    return np.concatenate(labels), np.concatenate(uncertainty)


def _streamed_equals_full_volume(kind, grid, seed):
    """Feed random logits over ``grid``'s crop to sink class ``kind`` in uneven slabs, as the sliding window
    hands them over, and check its labels and uncertainty against :func:`_full_volume_interpolation`."""
    from UXNetSegmentLib.slabs import uncertainty_from_prob
    classes, crop_shape = 7, tuple(int(s) for s in grid.crop_shape)
    logits = torch.randn((classes,) + crop_shape, generator=torch.Generator().manual_seed(seed)) * 3
    sink = kind(grid, classes, "entropy")
    for x0 in range(0, crop_shape[0], 5):
        sink(x0, logits[:, x0:x0 + 5])
    labels, unc = sink.result()
    prob = torch.softmax(logits, 0)
    expected, expected_unc = _full_volume_interpolation(grid, prob, uncertainty_from_prob(prob))
    assert np.array_equal(labels.ravel(), expected)
    np.testing.assert_allclose(unc.ravel(), expected_unc, atol=1e-5)
    return labels, unc


def test_separable_inverse_equals_one_full_volume_interpolation():
    """Axis by axis, row by row, on a permuted, flipped, rescaled and cropped grid whose border clips, gives
    the labels of the 8-corner interpolation of the whole probability volume (ties of the rounding aside)."""
    from UXNetSegmentLib.inverse_separable import SeparableInverse
    from UXNetSegmentLib.resample import GridMap, ijk_to_ras
    image = synthetic_ct(size=(30, 26, 14), spacing=(1.3, 0.7, 2.9), direction=rotation_direction(20.0, axis=1))
    grid_shape, crop_start, crop_shape = (40, 29, 31), (2, 1, 0), (38, 27, 26)  # crop ends at x's, starts at z's edge
    to_grid = np.zeros((4, 4))
    to_grid[3, 3] = 1.0
    to_grid[0, 2], to_grid[1, 0], to_grid[2, 1] = -2.3, 0.85, 1.1  # x <- -k, y <- i, z <- j
    to_grid[:3, 3] = (42.0, -1.5, -2.0)  # x overruns the grid and z starts before it (both clipped to the
    # border), y starts before the crop and ends inside it, z runs past the crop
    grid = GridMap(image, ijk_to_ras(image) @ np.linalg.inv(to_grid), grid_shape, crop_start, crop_shape)
    assert grid.axis_map() == (2, 0, 1)
    labels, unc = _streamed_equals_full_volume(SeparableInverse, grid, seed=5)
    assert 0 < (labels > 0).mean() < 1 and (labels == 0).mean() > 0.05  # some voxels lie outside the crop


def test_streaming_inverse_equals_one_full_volume_interpolation():
    """Slab by slab with every class gives the labels of interpolating the whole probability volume at once."""
    from UXNetSegmentLib.inverse_stream import StreamingInverse
    from UXNetSegmentLib.resample import GridMap, ijk_to_ras
    image = synthetic_ct(size=(30, 26, 14), spacing=(1.3, 0.7, 2.9), direction=rotation_direction(20.0, axis=1))
    grid_shape, crop_start, crop_shape = (37, 29, 31), (2, 1, 3), (33, 27, 26)
    grid_affine = np.diag([1.1, 0.9, 1.4, 1.0])
    grid_affine[:3, 3] = np.array(ijk_to_ras(image))[:3, 3] - np.array([12.0, 9.0, 10.0])
    grid = GridMap(image, grid_affine, grid_shape, crop_start, crop_shape)
    assert grid.axis_map() is None  # oblique to the grid: the pipeline takes this path
    labels, unc = _streamed_equals_full_volume(StreamingInverse, grid, seed=3)
    assert 0 < (labels > 0).mean() < 1 and unc.max() <= 1.0 + 1e-6
