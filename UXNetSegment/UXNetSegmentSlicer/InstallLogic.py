"""The engine's Python dependencies inside Slicer: check, then install after one confirmation.

torch comes from the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA build that matches the
driver); the rest are pinned and installed with ``slicer.util.pip_install`` under a constraints file
that holds Slicer's own numpy, SimpleITK and requests at their current versions, so pip can never
replace them. Importable without Slicer: only :meth:`InstallLogic.install` needs the application.
"""
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

try:
    from importlib.metadata import PackageNotFoundError, version
except ImportError:  # pragma: no cover - Python < 3.8
    from importlib_metadata import PackageNotFoundError, version

from UXNetSegmentLib.errors import UXNetError


@dataclass(frozen=True)
class Requirement:
    """One dependency: the module it provides (for the import check) and its pinned pip specifier."""

    importName: str
    pipSpec: str


TORCH = Requirement("torch", "torch>=2.0")
"""Installed by PyTorchUtils, never by pip directly (the right CUDA build depends on the driver)."""

ENGINE_REQUIREMENTS = (
    Requirement("monai", "monai==1.6.1"),
    Requirement("slicerio", "slicerio==1.4.0"),
    Requirement("tqdm", "tqdm==4.70.1"),
    Requirement("psutil", "psutil==7.2.2"),
)
"""What the engine imports besides torch and what Slicer ships (numpy, SimpleITK)."""

PROTECTED = ("numpy", "SimpleITK", "requests")
"""Slicer's own packages: pinned to their installed versions in the constraints file."""


def isImportable(importName: str) -> bool:
    try:
        return importlib.util.find_spec(importName) is not None
    except (ImportError, ValueError):
        return False


def installedVersion(distribution: str) -> Optional[str]:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


class InstallLogic:
    """Find what is missing and install it; ``log`` receives one line per step."""

    def __init__(self, requirements=ENGINE_REQUIREMENTS, log: Optional[Callable[[str], None]] = None):
        self.requirements = tuple(requirements)
        self.log = log or (lambda text: None)

    def missing(self) -> List[Requirement]:
        """Requirements whose module cannot be imported (torch first when it is missing)."""
        wanted = (TORCH,) + self.requirements
        return [req for req in wanted if not isImportable(req.importName)]

    @staticmethod
    def constraints() -> List[str]:
        """``name==version`` for each protected package that is installed."""
        lines = []
        for name in PROTECTED:
            found = installedVersion(name)
            if found:
                lines.append(f"{name}=={found}")
        return lines

    def pipArguments(self, requirements: List[Requirement], constraintsPath: str) -> List[str]:
        """The ``pip install`` arguments (after ``install``) for ``requirements`` under the constraints file."""
        return [req.pipSpec for req in requirements] + ["--constraint", constraintsPath]

    def confirmationText(self, missing: List[Requirement]) -> str:
        names = ", ".join(req.pipSpec for req in missing)
        return (f"UXNetSegment needs these Python packages, which are not installed yet: {names}. "
                f"They will be downloaded and installed into Slicer's Python (a few GB for torch with CUDA; "
                f"this can take several minutes). Slicer's own numpy, SimpleITK and requests stay as they are. "
                f"Install now?")

    def ensure(self, confirm: Callable[[str], bool]) -> bool:
        """Install what is missing after ``confirm(text)`` says yes; True when everything is present.

        Raises :class:`UXNetError` when the user declines or an install step fails.
        """
        missing = self.missing()
        if not missing:
            return True
        if not confirm(self.confirmationText(missing)):
            raise UXNetError("the engine's Python packages are not installed; click Segment again and accept "
                             "the installation (or install them from the Python console)")
        self.install(missing)
        still = [req.importName for req in self.missing()]
        if still:
            raise UXNetError(f"{', '.join(still)} still cannot be imported after installing; restart Slicer "
                             f"and try again")
        return True

    def install(self, missing: List[Requirement]) -> None:
        """Install ``missing`` inside Slicer (torch through PyTorchUtils, the rest pinned through pip)."""
        import slicer

        if any(req.importName == "torch" for req in missing):
            self.log("Installing PyTorch through the PyTorch extension (PyTorchUtils)...")
            self.installTorch()
        rest = [req for req in missing if req.importName != "torch"]
        if not rest:
            return
        handle, path = tempfile.mkstemp(prefix="uxnet-constraints-", suffix=".txt")
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write("\n".join(self.constraints()) + "\n")
            args = self.pipArguments(rest, path)
            self.log("pip install " + " ".join(args))
            try:
                slicer.util.pip_install(args)
            except Exception as exc:  # noqa: BLE001 - pip's failure text is shown as one line
                raise UXNetError(f"installing {', '.join(r.pipSpec for r in rest)} failed ({exc}); check the "
                                 f"network connection, or install them from Slicer's Python console") from None
        finally:
            os.remove(path)

    @staticmethod
    def installTorch() -> None:
        """torch via the PyTorch extension, which chooses the CUDA/CPU build for this computer."""
        try:
            import PyTorchUtils
        except ImportError:
            raise UXNetError("the PyTorch extension is not installed; install 'PyTorch' from the Extensions "
                             "Manager, restart Slicer, then click Segment again") from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return
        torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=">=2.0")
        if torch is None:
            raise UXNetError("PyTorch could not be installed; install it from the PyTorch module "
                             "(Modules > Utilities > PyTorch) and try again")


DEVICE_QUERY_SCRIPT = (
    "import json, torch\n"
    "gpus = {}\n"
    "if torch.cuda.is_available():\n"
    "    p = torch.cuda.get_device_properties(0)\n"
    "    gpus['cuda'] = '%s (%.0f GB)' % (p.name, p.total_memory / 2**30)\n"
    "print(json.dumps(gpus))\n"
)
"""Run in the engine's interpreter (never in Slicer's own process): prints ``{"cuda": "NAME (N GB)"}`` or ``{}``."""


def parseDeviceQuery(stdoutLines: List[str]) -> Dict[str, str]:
    """The GPUs reported by :data:`DEVICE_QUERY_SCRIPT` (its last JSON line), ``{}`` when none or unreadable."""
    import json

    for line in reversed(stdoutLines):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
    return {}
