"""The typed description of one segmentation run, and its translation to engine CLI arguments."""
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

DEVICES = ("auto", "cuda", "cpu")


@dataclass
class SegmentationParameters:
    """What to run: a catalogue model (or a local checkpoint + spec) and the speed/quality options.

    ``overlap`` is the sliding-window overlap fraction in [0, 1); ``None`` keeps the model's own value.
    ``weightsPath`` overrides the catalogue file of ``model`` (``specPath`` then optional); with no
    ``model``, both ``weightsPath`` and ``specPath`` are needed.
    """

    model: str = ""
    weightsPath: str = ""
    specPath: str = ""
    device: str = "auto"
    overlap: Optional[float] = None
    fast: bool = False
    tta: bool = False
    uncertainty: bool = False
    reviewThreshold: float = 0.5  # review share: voxels above this uncertainty (with ``uncertainty``)
    show3D: bool = True

    def isValid(self) -> Tuple[bool, str]:
        """``(True, "")`` or ``(False, one-line reason with the fix)``; checks files exist, not their content."""
        if not self.model and not (self.weightsPath and self.specPath):
            return False, "no model chosen; pick a model, or give both a checkpoint file and its spec JSON"
        if self.weightsPath and not os.path.isfile(self.weightsPath):
            return False, f"checkpoint {self.weightsPath} does not exist; choose an existing .pth file"
        if self.specPath and not os.path.isfile(self.specPath):
            return False, f"model spec {self.specPath} does not exist; choose an existing .json file"
        if self.device not in DEVICES:
            return False, f"device '{self.device}' is unknown; choose one of {', '.join(DEVICES)}"
        if not 0.0 <= float(self.reviewThreshold) <= 1.0:
            return False, f"review threshold {self.reviewThreshold} is outside [0, 1]; use e.g. 0.5"
        if self.overlap is not None and not 0.0 <= float(self.overlap) < 1.0:
            return False, f"overlap {self.overlap} is outside [0, 1); use e.g. 0.5 (quality) or 0.25 (speed)"
        return True, ""

    def asArgList(self) -> List[str]:
        """The ``uxnet-segment segment`` options for these parameters (input/output/progress not included)."""
        args: List[str] = []
        if self.model:
            args += ["--model", self.model]
        if self.weightsPath:
            args += ["--weights", self.weightsPath]
        if self.specPath:
            args += ["--spec", self.specPath]
        args += ["--device", self.device]
        if self.overlap is not None:
            args += ["--overlap", repr(float(self.overlap))]
        if self.fast:
            args.append("--fast")
        if self.tta:
            args.append("--tta")
        return args
