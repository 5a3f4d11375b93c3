"""Public entry points: segment a SimpleITK image or a file with a catalogue or custom model."""
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import SimpleITK as sitk
import torch

from .allocator import tune_allocator
from .catalogue import ModelSpec, default_model, get_model, load_spec
from .checkpoint import load_network
from .devices import Predictor, device_description, resolve_device, run_with_fallback
from .errors import UXNetError
from .imageio import check_writable, read_image, validate_image, write_output, write_volume
from .pipeline import run_recipe
from .progress import CancelToken, ProgressCallback, report
from .resample import to_image


_NETWORKS: dict = {}


def cached_network(weights, num_classes: int, fresh: bool = False) -> torch.nn.Module:
    """Load a checkpoint once per process (keyed by path, size and mtime), so repeated calls reuse it
    (and its compiled form); ``fresh`` loads it again (its weights were released to a compiled form)."""
    path = Path(weights).resolve()
    stat = path.stat() if path.is_file() else None
    key = (str(path), stat.st_size, stat.st_mtime_ns, num_classes) if stat else None
    if key is None or key not in _NETWORKS or fresh:
        network = load_network(path, num_classes)
        if key is None:
            return network
        _NETWORKS.clear()  # keep one model resident, not every model ever used
        _NETWORKS[key] = network
    return _NETWORKS[key]


@dataclass
class SegmentResult:
    labels: sitk.Image                  # uint8 labels on the input's exact grid
    uncertainty: Optional[sitk.Image]   # float32 in [0, 1] on the same grid, or None
    spec: ModelSpec
    device: str
    seconds: float


def resolve_model(model: Optional[str] = None, weights=None, spec=None) -> Tuple[ModelSpec, Path]:
    """The model spec and weight file for a CLI/API request (``--model``, ``--weights``, ``--spec``)."""
    if spec is not None:
        model_spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
        if weights is None and model_spec.weights_path() is None:
            raise UXNetError(f"model spec '{model_spec.name}' has no weights here; pass --weights FILE.pth")
    elif model is not None:
        model_spec = get_model(model)
    elif weights is not None:
        raise UXNetError("a checkpoint alone does not say its labels or recipe; add --model NAME or --spec FILE.json")
    else:
        model_spec = default_model()
    path = Path(weights) if weights is not None else model_spec.weights_path()
    if path is None:
        raise UXNetError(f"weights for '{model_spec.name}' are not present; run 'uxnet-segment download "
                         f"{model_spec.name}' or pass --weights FILE.pth")
    return model_spec, path


def _check_overlap(overlap: Optional[float]) -> None:
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise UXNetError(f"overlap {overlap} is outside [0, 1); use e.g. 0.25 (fast) or 0.5 (default)")


def segment_image(image: sitk.Image, spec: ModelSpec, weights=None, network: Optional[torch.nn.Module] = None,
                  device: str = "auto", overlap: Optional[float] = None, fast: bool = False,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                  uncertainty: bool = False, tta: bool = False, batch_size: Optional[int] = None) -> SegmentResult:
    """Segment ``image`` with ``spec``'s recipe; labels come back on the input's own grid."""
    _check_overlap(overlap)
    image = validate_image(image)
    dev = resolve_device(device)
    start = time.perf_counter()
    reload = None
    if network is None:
        if weights is None:
            weights = spec.weights_path()
        if weights is None:
            raise UXNetError(f"no weights for '{spec.name}'; pass weights=FILE or download them")
        report(progress, "load", 0.0, f"reading {Path(weights).name}")
        network = cached_network(weights, spec.num_classes)

        def reload() -> torch.nn.Module:  # the network is ours: its compiled build may release its weights
            return cached_network(weights, spec.num_classes, fresh=True)
    elif network.out.conv.conv.out_channels != spec.num_classes:
        raise UXNetError(f"the network predicts {network.out.conv.conv.out_channels} classes but "
                         f"'{spec.name}' has {spec.num_classes}; use the matching spec")
    report(progress, "load", 1.0, device_description(dev))

    def run(device_now: torch.device, batch: int):
        predictor = Predictor(network, device_now, fast=fast, tta=tta, progress=progress, reload=reload)
        return run_recipe(image, spec, predictor, overlap=overlap, uncertainty="entropy" if uncertainty else None,
                          batch_size=batch, progress=progress, cancel=cancel), device_now

    raw, used = run_with_fallback(run, dev, batch_size or (4 if dev.type == "cuda" else 1), progress)
    unc = to_image(raw.uncertainty, image) if raw.uncertainty is not None else None
    return SegmentResult(to_image(raw.labels, image), unc, spec, str(used), time.perf_counter() - start)


def uncertainty_snapshot_path(snapshot_path) -> Path:
    """Where ``--snapshot X.png`` puts the uncertainty montage when ``--uncertainty`` is asked too: ``X-uncertainty.png``."""
    path = Path(snapshot_path)
    return path.with_name(f"{path.stem}-uncertainty{path.suffix or '.png'}")


def segment_file(input_path, output_path, model: Optional[str] = None, weights=None, spec=None,
                 device: str = "auto", overlap: Optional[float] = None, fast: bool = False,
                 uncertainty_path=None, tta: bool = False, snapshot_path=None,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> SegmentResult:
    """Read ``input_path``, segment it and write ``output_path`` (plus optional uncertainty and PNG).

    Every output path is checked before the run; each file is written atomically.
    """
    _check_overlap(overlap)
    check_writable(output_path)
    if uncertainty_path:
        check_writable(uncertainty_path)
    if snapshot_path and not Path(snapshot_path).parent.is_dir():
        raise UXNetError(f"snapshot folder {Path(snapshot_path).parent} does not exist; create it first")
    model_spec, weight_path = resolve_model(model, weights, spec)
    image = read_image(input_path)
    tune_allocator()
    result = segment_image(image, model_spec, weights=weight_path, device=device, overlap=overlap, fast=fast,
                           progress=progress, cancel=cancel, uncertainty=bool(uncertainty_path), tta=tta)
    report(progress, "write", 0.0, Path(output_path).name)
    write_output(result.labels, model_spec, output_path)
    if uncertainty_path:
        write_volume(result.uncertainty, uncertainty_path)
    if snapshot_path:
        from .snapshot import render_montage
        info = {v: (lab.name, lab.color) for v, lab in model_spec.labels.items()}
        title = f"{model_spec.title or model_spec.name}: {Path(input_path).name}"
        render_montage(image, snapshot_path, labels=result.labels, label_info=info, title=title)
        if result.uncertainty is not None:
            render_montage(image, uncertainty_snapshot_path(snapshot_path), heat=result.uncertainty,
                           title=f"{title}, uncertainty")
    report(progress, "write", 1.0, f"done in {result.seconds:.1f} s on {result.device}")
    return result
