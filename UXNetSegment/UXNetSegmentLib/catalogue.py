"""The model catalogue: one JSON file per model in ``Resources/Models/``.

A custom checkpoint is described by a JSON file of the same schema. Minimal fields::

    {"name": "mymodel", "labels": {"1": "liver"}, "spacing": [1.0, 1.0, 1.2] or null,
     "intensity_window": [-125, 275], "roi_size": [96, 96, 96], "overlap": 0.5, "modality": "CT"}

A label is either a plain name or an object with ``name``, ``color`` ([r, g, b], 0-255) and
``terminology`` (``category``/``type``/optional ``modifier``, each ``[scheme, code, meaning]``).
Names found in ``Resources/Models/terms.json`` get their colour and SNOMED-CT codes from there.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import UXNetError

RESOURCES_ENV = "UXNET_RESOURCES"
CACHE_ENV = "UXNET_CACHE"

DEFAULT_CATEGORY = ("SCT", "123037004", "Anatomical Structure")


def resources_dir() -> Path:
    """``Resources/`` in the source tree (``<repo>/Resources``) or an installed Slicer module."""
    candidates = []
    if os.environ.get(RESOURCES_ENV):
        candidates.append(Path(os.environ[RESOURCES_ENV]))
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "Resources", here.parent.parent / "Resources"]
    for cand in candidates:
        if (cand / "Models").is_dir():
            return cand
    raise UXNetError(f"model catalogue not found (looked in {', '.join(map(str, candidates))}); "
                     f"set {RESOURCES_ENV} to the folder that holds Models/")


def cache_dir() -> Path:
    """Where downloaded weights live; ``$UXNET_CACHE`` overrides ``~/.cache/uxnet-segment``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "uxnet-segment"


@dataclass
class Label:
    value: int
    name: str
    color: Tuple[int, int, int] = (128, 128, 128)
    category: Tuple[str, str, str] = DEFAULT_CATEGORY
    type: Optional[Tuple[str, str, str]] = None
    modifier: Optional[Tuple[str, str, str]] = None


@dataclass
class ModelSpec:
    name: str
    labels: Dict[int, Label]
    spacing: Optional[Tuple[float, float, float]]
    intensity_window: Optional[Tuple[float, float]]
    roi_size: Tuple[int, int, int] = (96, 96, 96)
    overlap: float = 0.5
    modality: str = "CT"
    title: str = ""
    description: str = ""
    citation: str = ""
    intensity_percentiles: Optional[Tuple[float, float]] = None
    crop_foreground: bool = True
    weights_url: Optional[str] = None
    weights_sha256: Optional[str] = None
    weights_file: Optional[str] = None
    bundled: bool = False
    source: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.labels else 1

    def weights_path(self) -> Optional[Path]:
        """The weight file if it is on disk (bundled in Resources/Weights or downloaded to the cache)."""
        if not self.weights_file:
            return None
        place = resources_dir() / "Weights" if self.bundled else cache_dir()
        path = place / self.weights_file
        return path if path.is_file() else None


def _triplet(value) -> Optional[Tuple[str, str, str]]:
    return tuple(str(v) for v in value) if value else None


def _terms_table() -> dict:
    path = resources_dir() / "Models" / "terms.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _parse_label(value: int, raw, terms: dict) -> Label:
    if not isinstance(raw, (str, dict)):
        raise UXNetError(f"label {value} must be a name or an object with 'name'; "
                         f"write it as \"{value}\": \"organ name\"")
    entry = {"name": raw} if isinstance(raw, str) else dict(raw)
    if "name" not in entry:
        raise UXNetError(f"label {value} has no name; write it as \"{value}\": \"organ name\"")
    known = terms.get(entry["name"].lower(), {})
    merged = {**known, **entry}
    term = merged.get("terminology", {})
    return Label(value=value, name=merged["name"], color=tuple(int(c) for c in merged.get("color", (128, 128, 128))),
                 category=_triplet(term.get("category")) or DEFAULT_CATEGORY,
                 type=_triplet(term.get("type")), modifier=_triplet(term.get("modifier")))


def _numbers(data: dict, key: str, count: int, where: str, positive: bool = False, rising: bool = False):
    """``data[key]`` as a tuple of ``count`` floats (None when absent/null); a one-line UXNetError otherwise."""
    value = data.get(key)
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if (len(numbers) != count or (positive and min(numbers) <= 0)
            or (rising and numbers[0] >= numbers[1])):
        kind = "positive numbers" if positive else ("numbers, low before high" if rising else "numbers")
        raise UXNetError(f"model spec{where}: '{key}' must be {count} {kind}, not {value!r}; fix the JSON file")
    return numbers


def spec_from_dict(data: dict, source: Optional[Path] = None) -> ModelSpec:
    where = f" in {source}" if source else ""
    for key in ("name", "labels"):
        if key not in data:
            raise UXNetError(f"model spec{where} has no '{key}'; see README 'Custom models' for the fields")
    if not isinstance(data["labels"], dict) or not data["labels"]:
        raise UXNetError(f"model spec{where}: 'labels' must be an object like {{\"1\": \"liver\"}}")
    _numbers(data, "spacing", 3, where, positive=True)
    _numbers(data, "roi_size", 3, where, positive=True)
    _numbers(data, "intensity_window", 2, where, rising=True)
    _numbers(data, "intensity_percentiles", 2, where, rising=True)
    overlap = data.get("overlap", 0.5)
    if not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise UXNetError(f"model spec{where}: 'overlap' must be a number in [0, 1), not {overlap!r}")
    terms = _terms_table()
    try:
        labels = {int(k): _parse_label(int(k), v, terms) for k, v in data["labels"].items()}
    except ValueError:
        raise UXNetError(f"model spec{where}: label keys must be integers like \"1\"") from None
    if 0 in labels:
        labels.pop(0)  # background is implicit
    weights = data.get("weights", {}) or {}
    known = {"name", "labels", "spacing", "intensity_window", "intensity_percentiles", "roi_size", "overlap",
             "modality", "title", "description", "citation", "crop_foreground", "weights"}
    window = data.get("intensity_window")
    percentiles = data.get("intensity_percentiles")
    if window is None and percentiles is None:
        raise UXNetError(f"model spec{where} needs 'intensity_window': [lo, hi] (or 'intensity_percentiles')")
    return ModelSpec(
        name=str(data["name"]), labels=labels,
        spacing=tuple(float(s) for s in data["spacing"]) if data.get("spacing") else None,
        intensity_window=tuple(float(v) for v in window) if window is not None else None,
        intensity_percentiles=tuple(float(v) for v in percentiles) if percentiles is not None else None,
        roi_size=tuple(int(r) for r in data.get("roi_size", (96, 96, 96))),
        overlap=float(data.get("overlap", 0.5)), modality=str(data.get("modality", "CT")),
        title=data.get("title", data["name"]), description=data.get("description", ""),
        citation=data.get("citation", ""), crop_foreground=bool(data.get("crop_foreground", True)),
        weights_url=weights.get("url"), weights_sha256=weights.get("sha256"), weights_file=weights.get("file"),
        bundled=bool(weights.get("bundled", False)), source=source,
        extra={k: v for k, v in data.items() if k not in known})


def load_spec(path) -> ModelSpec:
    path = Path(path)
    if not path.is_file():
        raise UXNetError(f"model spec {path} does not exist; give a JSON file with name, labels, spacing, "
                         f"intensity_window, roi_size, overlap, modality")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UXNetError(f"model spec {path} is not valid JSON ({exc}); fix the file") from None
    return spec_from_dict(data, path)


def list_models() -> List[ModelSpec]:
    """All catalogue models, bundled ones first, then by name."""
    folder = resources_dir() / "Models"
    specs = [load_spec(p) for p in sorted(folder.glob("*.json")) if p.name != "terms.json"]
    return sorted(specs, key=lambda s: (not s.bundled, s.name))


def get_model(name: str) -> ModelSpec:
    models = {m.name: m for m in list_models()}
    if name not in models:
        raise UXNetError(f"unknown model '{name}'; choose one of: {', '.join(sorted(models))} "
                         f"(or give --weights FILE --spec FILE.json)")
    return models[name]


def default_model() -> ModelSpec:
    """The first catalogue model whose weights are present; the bundled demo model otherwise."""
    models = list_models()
    official = [m for m in models if not m.bundled and m.weights_path() is not None]
    if official:
        return official[0]
    bundled = [m for m in models if m.bundled]
    if not bundled:
        raise UXNetError("no model weights are present; run 'uxnet-segment download NAME' or pass --weights FILE")
    return bundled[0]
