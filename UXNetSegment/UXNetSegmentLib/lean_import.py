"""Import MONAI without the optional packages it would load for nothing.

``import monai`` imports all of MONAI's submodules, and they import every optional package they find
installed (pandas, scikit-learn, matplotlib, SciPy, ...), used or not. The engine needs none of them for
segmenting (its resampling is MONAI's bilinear and nearest, in PyTorch): here they were 130 MiB of the
resident memory of the process that runs the network. The command line's ``segment`` (which is also what
the Slicer module runs) therefore imports MONAI through :func:`import_monai_lean` before anything else. The packages stay importable afterwards (the snapshot's
matplotlib); only MONAI's own features that need them (CSV datasets, plots) are then unavailable in
that process. A library user's ``import monai`` is left alone.
"""
import sys
from typing import Tuple

# Optional packages MONAI imports eagerly that no step of the engine's segmentation uses.
NOT_NEEDED: Tuple[str, ...] = ("pandas", "sklearn", "matplotlib", "scipy")


def import_monai_lean(skip: Tuple[str, ...] = NOT_NEEDED) -> bool:
    """Import MONAI with the packages ``skip`` hidden from it; False if MONAI was imported already."""
    if "monai" in sys.modules:
        return False
    hidden = [name for name in skip if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes ``import name`` raise ImportError
    try:
        import monai  # noqa: F401
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return True
