"""UX-Net Segment: 3D UX-Net segmentation in 3D Slicer (module, panel and self-test).

This file is thin on purpose. The work lives in two packages beside it:
``UXNetSegmentLib`` (the engine, run in a child process) and ``UXNetSegmentSlicer`` (headless-tested
Slicer-side logic). The widget below only connects the panel to them.
"""
import os
import sys
import time

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if MODULE_DIR not in sys.path:
    # Also when UXNetSegment/ is added as an "additional module path" without a build.
    sys.path.insert(0, MODULE_DIR)

from typing import Annotated, Optional  # noqa: E402

import qt  # noqa: E402
import vtk  # noqa: E402

import slicer  # noqa: E402
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode  # noqa: E402
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402

from UXNetSegmentLib.catalogue import default_model, get_model, list_models, resources_dir  # noqa: E402
from UXNetSegmentLib.errors import UXNetError  # noqa: E402
from UXNetSegmentSlicer import PanelText  # noqa: E402
from UXNetSegmentSlicer.InstallLogic import InstallLogic, isImportable, parseDeviceQuery  # noqa: E402
from UXNetSegmentSlicer.Parameters import SegmentationParameters  # noqa: E402
from UXNetSegmentSlicer.SegmentationLogic import (  # noqa: E402
    SegmentationLogic,
    State,
    addReviewSegment,
    registerTerminology,
)

SAMPLE_NAME = "UXNetSegment Colin27 T1"
SAMPLE_FILE = "colin27_t1_2mm.nrrd"
DEMO_MODEL = "demo_brain"
POLL_MS = 100
REVIEW_DELAY_MS = 250


#
# Module
#


class UXNetSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "UX-Net Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["UXNetSegment contributors"]
        self.parent.helpText = moduleHelpText()
        self.parent.acknowledgementText = (
            "3D UX-Net is the work of Ho Hin Lee, Shunxing Bao, Yuankai Huo and Bennett A. Landman "
            "(ICLR 2023). The official checkpoints were trained on the FLARE 2021, AMOS 2022 and FeTA 2021 "
            "challenge data; check each challenge's terms before clinical or commercial use.")
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def moduleHelpText() -> str:
    try:
        models = "".join(f"<li><b>{m.name}</b> ({m.modality}): {', '.join(l.name for _, l in sorted(m.labels.items()))}</li>"
                         for m in list_models())
    except UXNetError as exc:
        models = f"<li>model catalogue not available: {exc}</li>"
    return (
        "<p>Segments a CT or MR volume with a 3D UX-Net model. Pick the input volume and a model, then click "
        "<b>Segment</b>. The model runs in a separate process: Slicer stays responsive, the progress bar "
        "shows each sliding window, and <b>Cancel</b> stops it without touching the scene. The result is a "
        "new segmentation (named, coloured, SNOMED-coded segments) that you can edit in Segment Editor.</p>"
        f"<p>Models:</p><ul>{models}</ul>"
        "<p>Paper: Lee HH, Bao S, Huo Y, Landman BA. <i>3D UX-Net: A Large Kernel Volumetric ConvNet "
        "Modernizing Hierarchical Transformer for Medical Image Segmentation.</i> ICLR 2023 "
        "(arXiv:2209.15076).</p>")


def registerSampleData() -> None:
    """Offer the bundled Colin27 T1 volume in the Sample Data module."""
    try:
        import SampleData
    except ImportError:
        return
    path = resources_dir() / "SampleData" / SAMPLE_FILE
    if not path.is_file():
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="UXNetSegment", sampleName=SAMPLE_NAME, uris=path.as_uri(), fileNames=SAMPLE_FILE,
        nodeNames="Colin27 T1", thumbnailFileName=os.path.join(MODULE_DIR, "Resources", "Icons", "UXNetSegment.png"),
        loadFileType="VolumeFile")


def onStartupCompleted() -> None:
    for step in (registerSampleData,
                 lambda: registerTerminology(slicer.modules.terminologies.logic())):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - optional integrations must not break startup
            print(f"UXNetSegment: startup step skipped ({exc})")


#
# Parameter node
#


@parameterNodeWrapper
class UXNetSegmentParameterNode:
    """What the panel shows; widgets with a ``SlicerParameterName`` property in the .ui bind by name."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    weightsPath: str = ""
    device: str = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.5
    fast: bool = False
    show3D: bool = True
    uncertainty: bool = False
    uncertaintyThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    referenceSegmentation: vtkMRMLSegmentationNode


#
# Widget
#


class UXNetSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: GUI only. The logic runs the engine; a QTimer polls it on the GUI thread."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[UXNetSegmentLogic] = None
        self._parameterNode: Optional[UXNetSegmentParameterNode] = None
        self._parameterNodeGuiTag = None
        self._task = None  # the running segmentation or download (an EngineTask)
        self._taskKind = ""
        self._taskVolume = None  # the input volume of the running segmentation
        self._deviceTask = None  # the GPU query, independent of the above
        self._deviceChecked = False
        self._lastSegmentation = None  # what the last run produced, for Compare and Review
        self._lastUncertainty = None
        self._compareTable = None
        self._compareChart = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UXNetSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UXNetSegmentLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self.onPoll)

        for text, value in (("Auto", "auto"), ("CUDA (GPU)", "cuda"), ("CPU", "cpu")):
            self.ui.deviceSelector.addItem(text, value)
        self._fillModels()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.downloadWeightsButton.connect("clicked(bool)", self.onDownloadButton)
        self.ui.localWeightsButton.connect("clicked(bool)", self.onLocalWeightsButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.createReviewSegmentButton.connect("clicked(bool)", self.onCreateReviewSegmentButton)
        self.ui.reviewTableWidget.connect("cellDoubleClicked(int,int)", self.onReviewRowDoubleClicked)
        # The threshold slider updates the review list and segment live, once the user pauses dragging.
        self._reviewTimer = qt.QTimer()
        self._reviewTimer.setSingleShot(True)
        self._reviewTimer.setInterval(REVIEW_DELAY_MS)
        self._reviewTimer.connect("timeout()", self.onThresholdSettled)
        self.ui.uncertaintyThresholdSlider.connect("valueChanged(double)", lambda value: self._reviewTimer.start())
        self.initializeParameterNode()

    def cleanup(self) -> None:
        for task in (self._task, self._deviceTask):
            if task is not None:
                task.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if not self._deviceChecked:
            self._checkDevice()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self._task is not None:
            self._task.cancel()
            self._onTaskFinished()
        self._lastSegmentation = self._lastUncertainty = self._compareTable = self._compareChart = None
        self._fillReviewTable(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ----------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        node = self._parameterNode
        if not node.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                node.inputVolume = first
        if not node.model:
            try:
                node.model = default_model().name
            except UXNetError:
                pass
        self._showModel(node.model)

    def setParameterNode(self, parameterNode: Optional[UXNetSegmentParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            index = self.ui.deviceSelector.findData(self._parameterNode.device)
            self.ui.deviceSelector.setCurrentIndex(max(index, 0))
            self._updateButtons()

    def segmentationParameters(self) -> SegmentationParameters:
        node = self._parameterNode
        return SegmentationParameters(model=node.model, weightsPath=node.weightsPath, device=node.device,
                                      overlap=node.overlap, fast=node.fast, uncertainty=node.uncertainty,
                                      reviewThreshold=node.uncertaintyThreshold, show3D=node.show3D)

    # -- model and device --------------------------------------------------------------------------------
    def _fillModels(self) -> None:
        self.ui.modelSelector.clear()
        try:
            for spec in list_models():
                self.ui.modelSelector.addItem(spec.title or spec.name, spec.name)
        except UXNetError as exc:
            self._setStage(f"Model catalogue not available: {exc}", error=True)

    def onModelChanged(self, index: int) -> None:
        if not self._parameterNode or index < 0:
            return
        name = self.ui.modelSelector.itemData(index)
        if name == self._parameterNode.model:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.model = name
            self._parameterNode.weightsPath = ""
            try:
                self._parameterNode.overlap = get_model(name).overlap
            except UXNetError:
                pass
        self._showModel(name)

    def _showModel(self, name: str) -> None:
        index = self.ui.modelSelector.findData(name)
        if index >= 0 and index != self.ui.modelSelector.currentIndex:
            self.ui.modelSelector.setCurrentIndex(index)
        try:
            spec = get_model(name)
        except UXNetError as exc:
            self.ui.modelInfoLabel.text = str(exc)
            self.ui.weightsStatusLabel.text = ""
            return
        local = self._parameterNode.weightsPath if self._parameterNode else ""
        self.ui.modelInfoLabel.text = PanelText.modelInfoHtml(spec)
        self.ui.weightsStatusLabel.text = PanelText.weightsStatus(spec, local)
        self.ui.downloadWeightsButton.enabled = bool(spec.weights_url) and spec.weights_path() is None
        self._updateButtons()

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceSelector.itemData(index)

    def _checkDevice(self) -> None:
        """Ask a child process which GPU torch sees (Slicer itself never imports torch)."""
        if not isImportable("torch"):
            self.ui.deviceInfoLabel.text = PanelText.deviceText({}, torchPresent=False)
            return
        self._deviceChecked = True
        self.ui.deviceInfoLabel.text = "GPU: checking..."
        try:
            self._deviceTask = self.logic.startDeviceQuery()
        except UXNetError as exc:
            self.ui.deviceInfoLabel.text = f"GPU: not checked ({exc})"
            return
        self._timer.start()

    def onLocalWeightsButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            self.parent, "Choose a 3D UX-Net checkpoint", "", "PyTorch checkpoint (*.pth *.pt);;All files (*)")
        if path and self._parameterNode:
            self._parameterNode.weightsPath = path
            self._showModel(self._parameterNode.model)

    def onDownloadButton(self) -> None:
        if self._task is not None or not self._parameterNode:
            return
        try:
            task = self.logic.startDownload(self._parameterNode.model, self._onProgress, self._onLog)
        except UXNetError as exc:
            self._showError(str(exc))
            return
        self._startTask("download", task)

    # -- running -----------------------------------------------------------------------------------------
    def onSegmentButton(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._onTaskFinished()
            return
        node = self._parameterNode
        self.ui.logTextEdit.clear()
        try:
            InstallLogic(log=self._onLog).ensure(
                lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle="UXNetSegment: install"))
            task = self.logic.start(node.inputVolume, self.segmentationParameters(), node.outputSegmentation,
                                    self._onProgress, self._onLog)
        except UXNetError as exc:
            self._showError(str(exc))
            return
        self._taskVolume = node.inputVolume
        self._startTask("segment", task)

    def _startTask(self, kind: str, task) -> None:
        self._task, self._taskKind = task, kind
        self.ui.progressBar.value = 0
        self._setStage("Starting the engine...")
        self._updateButtons()
        self._timer.start()

    def onPoll(self) -> None:
        """QTimer slot on the GUI thread: forward the children's output, finish what has ended."""
        if self._deviceTask is not None and self._deviceTask.poll() in State.FINISHED:
            task, self._deviceTask = self._deviceTask, None
            gpus = parseDeviceQuery(task.stdout) if task.state == State.DONE else {}
            self.ui.deviceInfoLabel.text = PanelText.deviceText(gpus, torchPresent=True)
        if self._task is not None and self._task.poll() in State.FINISHED:
            self._onTaskFinished()
        if self._task is None and self._deviceTask is None:
            self._timer.stop()

    def _onTaskFinished(self) -> None:
        task, kind = self._task, self._taskKind
        self._task, self._taskKind = None, ""
        if task is None:
            return
        if task.state == State.DONE and kind == "segment":
            result = task.result
            self._lastSegmentation, self._lastUncertainty = result.segmentationNode, result.uncertaintyVolumeNode
            uncertaintyName = result.uncertaintyVolumeNode.GetName() if result.uncertaintyVolumeNode else None
            self.ui.progressBar.value = self.ui.progressBar.maximum
            self._setStage(PanelText.resultSummary(result.segmentationNode.GetName(), result.elapsedSeconds,
                                                   uncertaintyName))
            if result.uncertaintyVolumeNode is not None:  # heat overlay over the input, review list filled
                slicer.util.setSliceViewerLayers(background=self._taskVolume, foreground=result.uncertaintyVolumeNode,
                                                 foregroundOpacity=0.5)
                self.ui.uncertaintyCollapsibleButton.collapsed = False
            else:
                slicer.util.setSliceViewerLayers(background=self._taskVolume, foreground=None)
            self._fillReviewTable(result.segmentationNode)
        elif task.state == State.DONE and kind == "download":
            self._setStage(f"Weights downloaded: {task.result}")
            if self._parameterNode:
                self._showModel(self._parameterNode.model)
        elif task.state == State.CANCELLED:
            self.ui.progressBar.value = 0
            self._setStage("Cancelled; the scene is unchanged.")
        elif task.state == State.FAILED:
            self._showError(task.errorMessage)
        self._updateButtons()

    def _onProgress(self, stage: str, fraction: float, detail: str) -> None:
        self.ui.progressBar.value = int(round(fraction * self.ui.progressBar.maximum))
        self._setStage(PanelText.progressText(stage, fraction, detail))

    def _onLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def _setStage(self, text: str, error: bool = False) -> None:
        self.ui.stageLabel.text = text
        self.ui.stageLabel.styleSheet = "color: #c0392b;" if error else ""

    def _showError(self, message: str) -> None:
        self._setStage(f"Failed: {message}", error=True)
        self._onLog(f"Error: {message}")
        slicer.util.errorDisplay(message, windowTitle="UXNetSegment")

    def _updateButtons(self, caller=None, event=None) -> None:
        busy = self._task is not None
        node = self._parameterNode
        wanted = self.ui.modelSelector.findData(node.model) if node and node.model else -1
        if wanted >= 0 and wanted != self.ui.modelSelector.currentIndex:
            self._showModel(node.model)  # the model was set from Python or a loaded scene
            return
        if node and self.ui.deviceSelector.itemData(self.ui.deviceSelector.currentIndex) != node.device:
            self.ui.deviceSelector.setCurrentIndex(max(self.ui.deviceSelector.findData(node.device), 0))
        ready = bool(node and node.inputVolume and node.model)
        self.ui.segmentButton.text = "Cancel" if busy else "Segment"
        self.ui.segmentButton.enabled = busy or ready
        self.ui.segmentButton.toolTip = ("Stop the run; the scene stays as it was." if busy else
                                         "Run the model on the input volume." if ready else
                                         "Select an input volume and a model first.")
        self.ui.localWeightsButton.enabled = not busy
        for widget in (self.ui.modelSelector, self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector):
            widget.enabled = not busy

    # -- review tools ------------------------------------------------------------------------------------
    def _resultSegmentation(self):
        """The segmentation to review: the chosen output node, else the one the last run created."""
        node = self._parameterNode
        return (node.outputSegmentation if node and node.outputSegmentation else None) or self._lastSegmentation

    def onCompareButton(self) -> None:
        """Compare the result with the reference segmentation: table, Dice chart, reference as outlines."""
        from UXNetSegmentSlicer.CompareLogic import CompareLogic

        prediction = self._resultSegmentation()
        try:
            if prediction is None:
                raise UXNetError("no result to compare yet; click Segment first, or choose the output segmentation")
            result = CompareLogic().compare(prediction, self._parameterNode.referenceSegmentation,
                                            tableNode=self._compareTable, chartNode=self._compareChart)
        except UXNetError as exc:
            self._showError(str(exc))
            return
        self._compareTable, self._compareChart = result.tableNode, result.chartNode
        self.ui.compareTableView.setMRMLTableNode(result.tableNode)
        slicer.modules.plots.logic().ShowChartInLayout(result.chartNode)
        self._setStage(f"Compared '{prediction.GetName()}' with '{self._parameterNode.referenceSegmentation.GetName()}'.")

    def _reviewInputs(self):
        """(segmentation, uncertainty volume) of the result to review; raises UXNetError naming what is missing."""
        segmentation = self._resultSegmentation()
        if segmentation is None:
            raise UXNetError("no result to review yet; tick 'Output uncertainty' and click Segment first")
        if self._lastUncertainty is None or self._lastUncertainty.GetScene() is None:
            raise UXNetError("no uncertainty map for this result; tick 'Output uncertainty' and segment again")
        return segmentation, self._lastUncertainty

    def _rescore(self, segmentation, uncertainty, threshold: float, withSegment: bool) -> None:
        from UXNetSegmentSlicer.CompareLogic import CompareLogic

        CompareLogic().reviewScoresFromVolume(segmentation, uncertainty, threshold)
        if withSegment:
            addReviewSegment(segmentation, uncertainty, threshold)
        self._fillReviewTable(segmentation)

    def onCreateReviewSegmentButton(self) -> None:
        """Score each segment by its boundary uncertainty and add a "needs review" segment above the threshold."""
        threshold = self._parameterNode.uncertaintyThreshold
        try:
            segmentation, uncertainty = self._reviewInputs()
            self._rescore(segmentation, uncertainty, threshold, withSegment=True)
        except UXNetError as exc:
            self._showError(str(exc))
            return
        self._setStage(f"Added the review segment (uncertainty > {threshold:.2f}) to '{segmentation.GetName()}'; "
                       f"move the threshold to update it.")

    def onThresholdSettled(self) -> None:
        """The slider stopped: refresh the shares above threshold, and the review segment if there is one."""
        from UXNetSegmentSlicer.CompareLogic import REVIEW_SEGMENT_ID

        try:
            segmentation, uncertainty = self._reviewInputs()
        except UXNetError:
            return  # nothing to review yet: the slider only sets the threshold for later
        hasSegment = segmentation.GetSegmentation().GetSegment(REVIEW_SEGMENT_ID) is not None
        try:
            self._rescore(segmentation, uncertainty, self._parameterNode.uncertaintyThreshold, hasSegment)
        except UXNetError as exc:
            self._setStage(f"Failed: {exc}", error=True)

    def _fillReviewTable(self, segmentation) -> None:
        """The review list: segments with a review score, least certain first."""
        from UXNetSegmentSlicer.CompareLogic import CompareLogic

        rows = CompareLogic.reviewRows(segmentation)
        table = self.ui.reviewTableWidget
        table.setRowCount(len(rows))
        for r, cells in enumerate(PanelText.reviewTableCells(rows)):
            for c, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setData(qt.Qt.UserRole, rows[r].segmentId)
                table.setItem(r, c, item)
        table.resizeColumnsToContents()

    def onReviewRowDoubleClicked(self, row: int, column: int) -> None:
        """Centre the slice views on the segment of that row."""
        segmentation = self._resultSegmentation()
        item = self.ui.reviewTableWidget.item(row, 0)
        if segmentation is None or item is None:
            return
        center = segmentation.GetSegmentCenterRAS(item.data(qt.Qt.UserRole))
        if center is not None:
            slicer.modules.markups.logic().JumpSlicesToLocation(center[0], center[1], center[2], True)


#
# Logic
#


class UXNetSegmentLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """The parameter node (from Slicer's base class) plus the headless-tested :class:`SegmentationLogic`."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # chains to SegmentationLogic.__init__() via super()

    def getParameterNode(self) -> UXNetSegmentParameterNode:
        return UXNetSegmentParameterNode(super().getParameterNode())


#
# Test
#


def _isNan(values):
    import numpy

    return numpy.isnan(values.astype(float))



class UXNetSegmentTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: real engine, real bundled model, real sample volume, real panel."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()
        InstallLogic(log=print).ensure(lambda text: True)  # unattended: accept the one-time install

    def runTest(self) -> None:
        self.setUp()
        self.test_dependencies()
        self.setUp()
        self.test_segment_sample_blocking()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()
        self.setUp()
        self.test_panel_segment_button()

    def _loadSample(self):
        path = resources_dir() / "SampleData" / SAMPLE_FILE
        self.assertTrue(path.is_file(), f"sample volume missing: {path}")
        return slicer.util.loadVolume(str(path))

    def test_dependencies(self) -> None:
        self.delayDisplay("Checking the engine's Python packages")
        self.assertEqual(InstallLogic().missing(), [])

    def test_segment_sample_blocking(self) -> None:
        self.delayDisplay(f"Segmenting the sample with {DEMO_MODEL}")
        volume = self._loadSample()
        spec = get_model(DEMO_MODEL)
        stages = []
        result = UXNetSegmentLogic().segmentBlocking(
            volume, SegmentationParameters(model=DEMO_MODEL, device="auto", show3D=True),
            progressCallback=lambda stage, fraction, detail: stages.append(stage), timeout=900)
        segmentation = result.segmentationNode.GetSegmentation()
        self.assertIn("inference", stages)
        self.assertEqual(segmentation.GetNumberOfSegments(), len(spec.labels))
        voxels = slicer.util.arrayFromVolume(volume).shape
        nonEmpty = 0
        for index, (value, label) in enumerate(sorted(spec.labels.items())):
            segmentId = segmentation.GetNthSegmentID(index)
            self.assertEqual(segmentation.GetSegment(segmentId).GetName(), label.name)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentationNode, segmentId, volume)
            self.assertEqual(mask.shape, voxels)
            nonEmpty += int(mask.any())
        self.assertGreater(nonEmpty, 0, "the demo model found nothing in its own sample volume")
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"))
        self.delayDisplay("Sample segmented")

    def test_cancel_leaves_scene_unchanged(self) -> None:
        self.delayDisplay("Cancelling a run")
        volume = self._loadSample()
        before = [slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())]
        task = UXNetSegmentLogic().start(volume, SegmentationParameters(model=DEMO_MODEL, device="cpu"))
        pid = task.runner.pid
        while task.poll() == State.RUNNING and task.lastProgress is None:
            slicer.app.processEvents()
            time.sleep(0.02)
        task.cancel()
        after = [slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())]
        self.assertEqual(task.state, State.CANCELLED)
        self.assertEqual(before, after)
        import psutil

        self.assertFalse(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)

    def test_panel_segment_button(self) -> None:
        """Drive the real panel: Segment turns into Cancel, the QTimer polls, the result appears."""
        self.delayDisplay("Segmenting through the panel")
        volume = self._loadSample()
        slicer.util.selectModule("UXNetSegment")
        widget = slicer.util.getModuleWidget("UXNetSegment")
        widget._parameterNode.inputVolume = volume
        widget._parameterNode.model = DEMO_MODEL
        widget._parameterNode.show3D = False
        widget._parameterNode.uncertainty = True
        segmentationsBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        widget.ui.segmentButton.click()
        self.assertEqual(widget.ui.segmentButton.text, "Cancel")
        deadline = time.monotonic() + 900
        while widget._task is not None and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertIsNone(widget._task, "the run did not finish in time")
        self.assertEqual(widget.ui.segmentButton.text, "Segment")
        self.assertIn("Done", widget.ui.stageLabel.text)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), segmentationsBefore + 1)
        result = widget._lastSegmentation
        self.assertIsNotNone(widget._lastUncertainty)

        self.delayDisplay("Review list, review segment and the live threshold")
        table = widget.ui.reviewTableWidget
        self.assertGreater(table.rowCount, 0, "the review list is empty after a run with uncertainty")
        scores = [float(table.item(r, 1).text()) for r in range(table.rowCount)]
        self.assertEqual(scores, sorted(scores, reverse=True))
        widget.ui.createReviewSegmentButton.click()
        review = result.GetSegmentation().GetSegment("UXNetSegment_review")
        self.assertIsNotNone(review)
        before = slicer.util.arrayFromSegmentBinaryLabelmap(result, "UXNetSegment_review", volume).sum()
        widget.ui.uncertaintyThresholdSlider.value = 0.2
        widget.onThresholdSettled()  # what the slider's timer calls once dragging pauses
        after = slicer.util.arrayFromSegmentBinaryLabelmap(result, "UXNetSegment_review", volume).sum()
        self.assertGreaterEqual(after, before, "a lower threshold must not shrink the review segment")
        widget.onReviewRowDoubleClicked(0, 0)  # jumps the slice views to the least certain segment
        result.GetSegmentation().RemoveSegment("UXNetSegment_review")

        self.delayDisplay("Compare with a copy of the result")
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        copyItem = slicer.modules.subjecthierarchy.logic().CloneSubjectHierarchyItem(sh, sh.GetItemByDataNode(result))
        widget._parameterNode.referenceSegmentation = sh.GetItemDataNode(copyItem)
        widget.ui.compareButton.click()
        table = widget._compareTable
        self.assertIsNotNone(table)
        dice = slicer.util.arrayFromTableColumn(table, "Dice")
        self.assertTrue(((dice == 1.0) | _isNan(dice)).all(), f"Dice of a copy must be 1: {dice}")
        self.delayDisplay("Panel run finished")
