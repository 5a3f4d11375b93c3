"""Volume node -> engine child process -> segmentation node, without freezing Slicer.

Importable with slicer-core alone (no ``qt``, ``ctk`` or ``slicer.app``), so it is tested headless.

The run is a small state machine, driven by :meth:`EngineTask.poll` on the caller's thread::

    running --(exit 0)--> importing --> done
       |   \\--(exit != 0)--> failed   (message: the engine's own ``error:`` line)
       \\--(cancel())------> cancelled (process tree killed, scene untouched)

Nothing is added to the scene until the engine has succeeded; then the new segmentation node is
built outside the scene and added in one go (or, when the user chose an existing output node, that
node's segments are replaced in one go).
"""
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import slicer

from UXNetSegmentLib.allocator import child_environment
from UXNetSegmentLib.catalogue import Label, ModelSpec, get_model, load_spec, resources_dir
from UXNetSegmentLib.errors import Cancelled, UXNetError
from UXNetSegmentLib.imageio import terminology as engineTerminology
from UXNetSegmentLib.snapshot import HEAT_FLOOR

from .CompareLogic import REVIEW_SEGMENT_ID, CompareLogic
from .InstallLogic import DEVICE_QUERY_SCRIPT
from .Parameters import SegmentationParameters
from .ProcessRunner import LogLine, ProcessRunner, ProgressEvent
from .ResultReader import readEngineSegmentation, readScalarVolume

MODULE_DIR = Path(__file__).resolve().parent.parent
"""The folder holding ``UXNetSegmentLib``: put on the child's ``PYTHONPATH``."""

# The child sets its allocator up itself; what glibc reads only at start-up (its per-thread cache off) comes
# from here (UXNetSegmentLib.allocator).
CHILD_ENVIRONMENT = child_environment()

WARNING_STAGE = "warning"  # the engine reports fallbacks as progress events of this stage

ProgressCallback = Callable[[str, float, str], None]
LogCallback = Callable[[str], None]


class State:
    RUNNING = "running"
    IMPORTING = "importing"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"
    FINISHED = (DONE, CANCELLED, FAILED)


@dataclass
class SegmentationResult:
    segmentationNode: object
    uncertaintyVolumeNode: Optional[object] = None
    elapsedSeconds: float = 0.0
    log: List[str] = field(default_factory=list)


def defaultPythonExecutable() -> str:
    """Slicer's ``PythonSlicer`` inside the application; this interpreter everywhere else."""
    if not hasattr(slicer, "app"):
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
    return str(beside) if beside.is_file() else sys.executable


def terminologyEntry(label: Label) -> str:
    """Slicer's serialized terminology string for ``label``: the same codes the engine writes to ``.seg.nrrd``.

    Each code is a ``[scheme, value, meaning]`` triple (SNOMED CT from the catalogue, or the engine's
    private ``99UXNET`` code for a label without one).
    """
    term = engineTerminology(label)
    category, kind = term["category"], term["type"]
    modifier = term.get("typeModifier") or ("", "", "")
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        term["contextName"],
        category[1], category[0], category[2],
        kind[1], kind[0], kind[2],
        modifier[1], modifier[0], modifier[2],
        term.get("anatomicContextName", ""), "", "", "", "", "", "")


def _setTerminology(segment, entry: str) -> None:
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(entry)
    else:  # Slicer < 5.8
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


class EngineTask:
    """One engine command run in a child process; call :meth:`poll` (e.g. from a QTimer) until ``finished``.

    ``onSuccess`` runs on the polling thread after the command exits with 0; its return value becomes
    :attr:`result`. A :class:`UXNetError` (or any exception) it raises turns the task into ``failed``.
    """

    def __init__(self, runner: ProcessRunner, workDir: Optional[Path] = None,
                 onSuccess: Optional[Callable[[], object]] = None,
                 progressCallback: Optional[ProgressCallback] = None, logCallback: Optional[LogCallback] = None):
        self.runner = runner
        self.workDir = workDir
        self.onSuccess = onSuccess
        self.progressCallback = progressCallback
        self.logCallback = logCallback
        self.state = State.RUNNING
        self.errorMessage = ""
        self.result = None
        self.log: List[str] = []
        self.stdout: List[str] = []
        self.lastProgress: Optional[ProgressEvent] = None
        self.started = time.monotonic()

    @property
    def finished(self) -> bool:
        return self.state in State.FINISHED

    def emitLog(self, text: str) -> None:
        self.log.append(text)
        if self.logCallback is not None:
            self.logCallback(text)

    def emitProgress(self, stage: str, fraction: float, detail: str = "") -> None:
        self.lastProgress = ProgressEvent(stage, fraction, detail)
        if self.progressCallback is not None:
            self.progressCallback(stage, fraction, detail)

    def poll(self) -> str:
        """Forward new output to the callbacks; run ``onSuccess`` once the command has succeeded.

        Returns the state. Never blocks, except while ``onSuccess`` runs (on this thread).
        """
        if self.state != State.RUNNING:
            return self.state
        for event in self.runner.poll():
            if isinstance(event, ProgressEvent) and event.stage == WARNING_STAGE:
                self.emitLog(f"Warning: {event.detail}")  # e.g. a CPU fallback: worth reading, not progress
            elif isinstance(event, ProgressEvent):
                self.emitProgress(event.stage, event.fraction, event.detail)
            elif isinstance(event, LogLine) and event.text.strip():
                if event.stream == "stdout":
                    self.stdout.append(event.text)
                self.emitLog(event.text)
        if not self.runner.finished:
            return self.state
        if self.runner.returncode != 0:
            self.finish(State.FAILED, self.runner.failureMessage())
            return self.state
        if self.onSuccess is not None:
            self.state = State.IMPORTING
            try:
                self.result = self.onSuccess()
            except UXNetError as exc:
                self.finish(State.FAILED, str(exc))
                return self.state
            except Exception as exc:  # noqa: BLE001 - shown to the user as one line, never "see the log"
                self.finish(State.FAILED, f"loading the result failed ({type(exc).__name__}: {exc}); "
                                          f"the scene was left unchanged")
                return self.state
        self.finish(State.DONE, "")
        return self.state

    def cancel(self) -> None:
        """Kill the command's whole process tree."""
        if self.state != State.RUNNING:
            return
        self.runner.kill()
        self.finish(State.CANCELLED, "cancelled by the user; nothing was added to the scene")

    def finish(self, state: str, message: str) -> None:
        self.state = state
        self.errorMessage = message
        if message:
            self.emitLog(("Error: " if state == State.FAILED else "") + message)
        if self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)

    def wait(self, timeout: Optional[float] = None, pollInterval: float = 0.05):
        """Poll until finished (for scripts and tests); returns :attr:`result` or raises the failure."""
        deadline = time.monotonic() + timeout if timeout else None
        while self.poll() == State.RUNNING:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise UXNetError(f"the engine did not finish within {timeout:.0f} s and was stopped; "
                                 f"use a smaller volume, the fast mode or a GPU")
            time.sleep(pollInterval)
        if self.state == State.CANCELLED:
            raise Cancelled(self.errorMessage)
        if self.state == State.FAILED:
            raise UXNetError(self.errorMessage)
        return self.result


class SegmentationLogic:
    """Runs the engine for a volume node and turns its ``.seg.nrrd`` into a segmentation node.

    ``scene`` defaults to ``slicer.mrmlScene``; ``pythonExecutable`` to PythonSlicer (inside Slicer) or
    this interpreter; ``extraEnvironment`` is added to the child's environment only.
    """

    def __init__(self, scene=None, pythonExecutable: Optional[str] = None,
                 extraEnvironment: Optional[Dict[str, str]] = None, moduleDir: Optional[Path] = None):
        self._scene = scene
        self.pythonExecutable = pythonExecutable
        self.extraEnvironment = dict(extraEnvironment or {})
        self.moduleDir = Path(moduleDir) if moduleDir else MODULE_DIR

    # -- setup -------------------------------------------------------------------------------------------
    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    def childEnvironment(self) -> Dict[str, str]:
        """A copy of this process's environment plus the engine's settings (``os.environ`` is not touched)."""
        env = dict(os.environ)
        env.update(CHILD_ENVIRONMENT)
        env.update(self.extraEnvironment)
        existing = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = str(self.moduleDir) + (os.pathsep + existing if existing else "")
        return env

    def buildCommand(self, inputPath: Path, outputPath: Path, parameters: SegmentationParameters,
                     uncertaintyPath: Optional[Path] = None) -> List[str]:
        """The full child command line: ``python -m UXNetSegmentLib segment IN -o OUT ... --progress json``."""
        python = self.pythonExecutable or defaultPythonExecutable()
        cmd = [python, "-m", "UXNetSegmentLib", "segment", str(inputPath), "-o", str(outputPath)]
        cmd += parameters.asArgList()
        if uncertaintyPath is not None:
            cmd += ["--uncertainty", str(uncertaintyPath)]
        return cmd + ["--progress", "json"]

    @staticmethod
    def resolveSpec(parameters: SegmentationParameters) -> ModelSpec:
        """The model spec whose labels name the segments (a custom spec file wins over the catalogue)."""
        if parameters.specPath:
            return load_spec(parameters.specPath)
        return get_model(parameters.model)

    @staticmethod
    def validateInput(inputVolume) -> None:
        if inputVolume is None:
            raise UXNetError("no input volume; load a volume (e.g. from Sample Data) and select it")
        if not inputVolume.IsA("vtkMRMLScalarVolumeNode") or inputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise UXNetError(f"'{inputVolume.GetName()}' is not a grey-scale volume; select a CT or MR "
                             f"scalar volume as input")
        image = inputVolume.GetImageData()
        if image is None or min(image.GetDimensions()) < 2:
            raise UXNetError(f"'{inputVolume.GetName()}' has no 3D image data; select a loaded 3D volume")
        if image.GetNumberOfScalarComponents() != 1:
            raise UXNetError(f"'{inputVolume.GetName()}' has {image.GetNumberOfScalarComponents()} components "
                             f"per voxel; convert it to a single grey-scale volume first")

    @staticmethod
    def writeVolume(volumeNode, path: Path) -> None:
        """Write ``volumeNode`` with its exact geometry (origin, spacing, oblique directions) to ``path``."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(False)
        if not storage.WriteData(volumeNode):
            raise UXNetError(f"could not write '{volumeNode.GetName()}' to the temporary folder {path.parent}; "
                             f"free some disk space or set TMPDIR to a writable folder")

    # -- running -----------------------------------------------------------------------------------------
    def start(self, inputVolume, parameters: SegmentationParameters, outputSegmentation=None,
              progressCallback: Optional[ProgressCallback] = None,
              logCallback: Optional[LogCallback] = None) -> EngineTask:
        """Start the engine for ``inputVolume`` and return at once; drive the task with ``task.poll()``.

        ``outputSegmentation``: an existing node to fill (its segments are replaced only on success);
        ``None`` creates a new node beside the input. Raises :class:`UXNetError` for invalid inputs.
        """
        self.validateInput(inputVolume)
        ok, reason = parameters.isValid()
        if not ok:
            raise UXNetError(reason)
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise UXNetError("the output must be a segmentation node; choose one or 'Create new segmentation'")
        spec = self.resolveSpec(parameters)
        workDir = Path(tempfile.mkdtemp(prefix="uxnet-slicer-"))

        def importIntoScene() -> SegmentationResult:
            task.emitProgress("import", 0.0, "loading the segmentation into the scene")
            segmentation, uncertainty = self.importResult(workDir, spec, inputVolume, outputSegmentation, parameters)
            task.emitProgress("import", 1.0, "done")
            return SegmentationResult(segmentation, uncertainty, time.monotonic() - task.started, task.log)

        try:
            inputPath = workDir / "input.nrrd"
            self.writeVolume(inputVolume, inputPath)
            uncertaintyPath = workDir / "uncertainty.nrrd" if parameters.uncertainty else None
            cmd = self.buildCommand(inputPath, workDir / "result.seg.nrrd", parameters, uncertaintyPath)
            task = self.startCommand(cmd[1:], importIntoScene, progressCallback, logCallback, workDir)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return task

    def segmentBlocking(self, inputVolume, parameters: SegmentationParameters, outputSegmentation=None,
                        progressCallback: Optional[ProgressCallback] = None,
                        logCallback: Optional[LogCallback] = None, timeout: Optional[float] = None,
                        pollInterval: float = 0.05) -> SegmentationResult:
        """Run to the end (for scripts and tests); raises :class:`UXNetError` with the engine's message."""
        task = self.start(inputVolume, parameters, outputSegmentation, progressCallback, logCallback)
        return task.wait(timeout, pollInterval)

    def startCommand(self, args: List[str], onSuccess: Optional[Callable[[], object]] = None,
                     progressCallback: Optional[ProgressCallback] = None,
                     logCallback: Optional[LogCallback] = None, workDir: Optional[Path] = None) -> EngineTask:
        """Start ``python ARGS`` (the engine's interpreter and environment) and return its task at once."""
        cmd = [self.pythonExecutable or defaultPythonExecutable()] + list(args)
        runner = ProcessRunner(cmd, env=self.childEnvironment(), cwd=str(workDir) if workDir else None)
        try:
            runner.start()
        except OSError as exc:
            raise UXNetError(f"cannot start the engine with {cmd[0]} ({exc.strerror or exc}); "
                             f"check the Python executable setting") from None
        task = EngineTask(runner, workDir, onSuccess, progressCallback, logCallback)
        task.emitLog("Running: " + " ".join(cmd))
        return task

    def startDownload(self, modelName: str, progressCallback: Optional[ProgressCallback] = None,
                      logCallback: Optional[LogCallback] = None) -> EngineTask:
        """Download a catalogue model's weights in a child process; ``task.result`` is the file path."""
        task = self.startCommand(["-m", "UXNetSegmentLib", "download", modelName, "--progress", "json"],
                                 lambda: task.stdout[-1].strip() if task.stdout else "",
                                 progressCallback, logCallback)
        return task

    def startDeviceQuery(self) -> EngineTask:
        """Ask the engine's interpreter which GPU torch sees; parse ``task.stdout`` with ``parseDeviceQuery``."""
        return self.startCommand(["-c", DEVICE_QUERY_SCRIPT])

    # -- importing ---------------------------------------------------------------------------------------
    def importResult(self, workDir: Path, spec: ModelSpec, inputVolume, outputSegmentation,
                     parameters: SegmentationParameters):
        """Load the engine's files into the scene; returns ``(segmentationNode, uncertaintyVolumeNode)``.

        On any failure every node added so far is removed again, so the scene is as before.
        """
        segPath = workDir / "result.seg.nrrd"
        if not segPath.is_file():
            raise UXNetError("the engine finished without writing its result; free disk space in the "
                             "temporary folder and run again")
        layer, _ = readEngineSegmentation(segPath)
        added = []
        try:
            node = self.fillSegmentationNode(layer, spec, inputVolume, outputSegmentation, added)
            if parameters.show3D:
                node.CreateClosedSurfaceRepresentation()
            uncertainty = None
            if parameters.uncertainty:
                uncertainty = self.loadUncertainty(workDir / "uncertainty.nrrd", inputVolume, node.GetName(), added)
                # review scores as segment tags, so the panel lists the least certain segment first
                CompareLogic(self.scene).reviewScoresFromVolume(node, uncertainty, parameters.reviewThreshold)
        except BaseException:
            for addedNode in added:
                self.scene.RemoveNode(addedNode)
            raise
        return node, uncertainty

    @staticmethod
    def addLabelSegments(segmentation, layer, spec: ModelSpec) -> None:
        """Add one segment per model label to ``segmentation``, all sharing ``layer`` (voxel = label value).

        Labels the engine did not find are still segments (empty). Names, colours and terminology come
        from the catalogue's :class:`Label` objects. The segments must not belong to any other
        segmentation (Slicer would split a labelmap shared across segmentations into binary copies).
        """
        binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        segmentation.SetSourceRepresentationName(binary)
        for value, label in sorted(spec.labels.items()):
            segment = slicer.vtkSegment()
            segment.SetName(label.name)
            segment.SetNameAutoGenerated(False)
            segment.SetColor(*[c / 255.0 for c in label.color])
            segment.SetColorAutoGenerated(False)
            segment.SetLabelValue(value)
            _setTerminology(segment, terminologyEntry(label))
            segment.AddRepresentation(binary, layer)
            segmentation.AddSegment(segment, f"Segment_{value}")

    def fillSegmentationNode(self, layer, spec: ModelSpec, inputVolume, outputSegmentation, added: list):
        """Fill the output node with the label segments of ``layer`` in one step.

        With no ``outputSegmentation`` a new node is filled outside the scene, then added beside
        ``inputVolume`` in the subject hierarchy; a chosen node has all its segments replaced at once.
        """
        scene = self.scene
        target = outputSegmentation
        if target is None:
            target = slicer.vtkMRMLSegmentationNode()
            target.SetName(scene.GenerateUniqueName(f"{inputVolume.GetName()} {spec.name}"))
        wasModifying = target.StartModify()
        try:
            target.GetSegmentation().RemoveAllSegments()
            self.addLabelSegments(target.GetSegmentation(), layer, spec)
            target.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        finally:
            target.EndModify(wasModifying)
        if outputSegmentation is None:
            self.addBeside(target, inputVolume, added)
        else:
            followTransform(target, inputVolume)
        return target

    def addBeside(self, node, inputVolume, added: list) -> None:
        """Add ``node`` to the scene beside ``inputVolume``, under the same transform; record it in ``added``."""
        self.scene.AddNode(node)
        added.append(node)
        node.CreateDefaultDisplayNodes()
        self.placeBeside(node, inputVolume)
        followTransform(node, inputVolume)

    def placeBeside(self, node, reference) -> None:
        """Put ``node`` under the same subject-hierarchy parent as ``reference`` (study, folder...)."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if shNode is None:
            return
        refItem = shNode.GetItemByDataNode(reference)
        if not refItem:
            return
        parent = shNode.GetItemParent(refItem)
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parent)
        else:
            shNode.CreateItem(parent, node)

    def loadUncertainty(self, path: Path, inputVolume, baseName: str, added: list):
        """Add the engine's uncertainty map as a scalar volume beside the input."""
        if not path.is_file():
            raise UXNetError("the engine did not write the uncertainty map; update the engine or run "
                             "again without 'Output uncertainty'")
        volume = readScalarVolume(path, self.scene.GenerateUniqueName(f"{baseName} uncertainty"))
        self.addBeside(volume, inputVolume, added)
        styleUncertaintyDisplay(volume)
        return volume


# Heat colour maps for the uncertainty overlay, best first (the first two ship with Slicer's Colors module,
# the last is built in and also present headless).
UNCERTAINTY_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileMagma.txt",
                              "vtkMRMLColorTableNodeIron")
UNCERTAINTY_HIDDEN_BELOW = HEAT_FLOOR  # near-certain voxels are transparent, as in the engine's PNG montages


def styleUncertaintyDisplay(volumeNode) -> None:
    """Show an uncertainty volume as a heat overlay: fixed 0..1 window, heat colours, certain voxels clear."""
    display = volumeNode.GetDisplayNode()
    if display is None:
        volumeNode.CreateDefaultDisplayNodes()
        display = volumeNode.GetDisplayNode()
    scene = volumeNode.GetScene()
    for colorId in UNCERTAINTY_COLOR_NODE_IDS:
        if scene is not None and scene.GetNodeByID(colorId) is not None:
            display.SetAndObserveColorNodeID(colorId)
            break
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(UNCERTAINTY_HIDDEN_BELOW)
    display.SetUpperThreshold(1.0)


def followTransform(node, inputVolume) -> None:
    """Put ``node`` under the same parent transform as ``inputVolume`` (or none)."""
    transform = inputVolume.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(transform.GetID() if transform else None)


def addReviewSegment(segmentationNode, uncertaintyVolumeNode, threshold: float) -> str:
    """Add (or replace) a "needs review" segment: the voxels whose uncertainty is above ``threshold``.

    The mask is built on the uncertainty volume's grid (the input's grid), so it lines up with the
    segments; the segment is yellow and ready to be edited or used as a mask in Segment Editor.
    Returns the segment ID.
    """
    from UXNetSegmentLib.review import review_mask

    if segmentationNode is None:
        raise UXNetError("no segmentation to add the review segment to; run a segmentation first")
    if uncertaintyVolumeNode is None or uncertaintyVolumeNode.GetImageData() is None:
        raise UXNetError("no uncertainty map; tick 'Output uncertainty' and segment again")
    mask = review_mask(slicer.util.arrayFromVolume(uncertaintyVolumeNode), threshold).astype(np.uint8)
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetSegment(REVIEW_SEGMENT_ID) is not None:
        segmentation.RemoveSegment(REVIEW_SEGMENT_ID)
    segmentation.AddEmptySegment(REVIEW_SEGMENT_ID, f"needs review (uncertainty > {threshold:.2f})", [1.0, 0.9, 0.0])
    segment = segmentation.GetSegment(REVIEW_SEGMENT_ID)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, REVIEW_SEGMENT_ID, uncertaintyVolumeNode)
    return REVIEW_SEGMENT_ID


def registerTerminology(terminologiesLogic, path: Optional[Path] = None) -> Optional[str]:
    """Load the extension's ``UXNetSegment.term.json`` into Slicer's Terminologies; returns its context name."""
    path = Path(path) if path else resources_dir() / "Terminology" / "UXNetSegment.term.json"
    if terminologiesLogic is None or not path.is_file():
        return None
    name = terminologiesLogic.LoadTerminologyFromFile(str(path))
    return name or None
