"""The module's .ui loaded in real Qt (PySide6, offscreen): every widget the code uses exists; screenshot.

Slicer's own widget classes (qMRMLNodeComboBox, ctkCollapsibleButton, ...) cannot exist outside Slicer,
so the loader gets plain-Qt stand-ins registered under those class names. That is the only stand-in:
the .ui file, the layout and every standard Qt widget are real.
"""
import ast
import os
import re

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

QtCore = pytest.importorskip("PySide6.QtCore")
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from conftest_slicer import MODULE_DIR, REPO  # noqa: E402  (also puts UXNetSegment/ on sys.path)

UI_FILE = MODULE_DIR / "Resources" / "UI" / "UXNetSegment.ui"
MODULE_FILE = MODULE_DIR / "UXNetSegment.py"
SCREENSHOT = REPO / "docs" / "screenshot-panel.png"
REVIEW_SCREENSHOT = REPO / "docs" / "screenshot-review.png"
REVIEW_ROWS = REPO / "docs" / "review-scores.json"  # a real demo_brain run: tools/make_review_pictures.py


class qMRMLWidget(QWidget):
    """Stand-in for Slicer's qMRMLWidget (a QWidget that carries the MRML scene)."""


class qMRMLNodeComboBox(QComboBox):
    """Stand-in for qMRMLNodeComboBox: a combo box (node lists come from the scene in Slicer)."""


class qMRMLTableView(QTableView):
    """Stand-in for qMRMLTableView (shows a vtkMRMLTableNode in Slicer)."""


class ctkSliderWidget(QDoubleSpinBox):
    """Stand-in for ctkSliderWidget (slider + spin box in Slicer)."""


class ctkCollapsibleButton(QGroupBox):
    """Stand-in for ctkCollapsibleButton: a group box whose ``text`` is its title; collapsed hides its body."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self._collapsed = False

    def _getText(self) -> str:
        return self._text

    def _setText(self, text: str) -> None:
        self._text = text
        self._refreshTitle()

    def _getCollapsed(self) -> bool:
        return self._collapsed

    def _setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = bool(collapsed)
        self._refreshTitle()

    def _refreshTitle(self) -> None:
        self.setTitle(("\u25b6 " if self._collapsed else "\u25bc ") + self._text)

    def applyCollapsed(self) -> None:
        """Hide the body of a collapsed section (its children exist only after loading)."""
        for child in self.findChildren(QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        if self._collapsed:
            self.setFlat(True)
            self.setMaximumHeight(self.fontMetrics().height() + 6)

    text = QtCore.Property(str, _getText, _setText)
    collapsed = QtCore.Property(bool, _getCollapsed, _setCollapsed)


STAND_INS = [qMRMLWidget, qMRMLNodeComboBox, qMRMLTableView, ctkSliderWidget, ctkCollapsibleButton]


@pytest.fixture(scope="module")
def qapp():
    return QApplication.instance() or QApplication([])


@pytest.fixture(scope="module")
def panel(qapp):
    return load_panel()


def load_panel():
    loader = QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    file = QtCore.QFile(str(UI_FILE))
    assert file.open(QtCore.QFile.ReadOnly), f"cannot open {UI_FILE}"
    widget = loader.load(file)
    file.close()
    assert widget is not None, loader.errorString()
    for section in widget.findChildren(ctkCollapsibleButton):
        section.applyCollapsed()
    return widget


def names_used_by_module(attribute: str = "ui") -> set:
    """Every ``<x>.ui.<name>`` the module file reads (``self.ui.segmentButton`` -> ``segmentButton``)."""
    tree = ast.parse(MODULE_FILE.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == attribute:
            names.add(node.attr)
    return names


def parameter_node_fields() -> set:
    """The annotated fields of the module's ``@parameterNodeWrapper`` class."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in UXNetSegment.py")


def test_every_widget_the_code_uses_exists(panel):
    used = names_used_by_module()
    assert len(used) >= 15, used  # the parser really found the widget code
    missing = sorted(name for name in used if panel.findChild(QtCore.QObject, name) is None)
    assert not missing, f"UXNetSegment.py uses widgets that the .ui lacks: {missing}"


def test_parameter_bindings_match_parameter_node(panel):
    fields = parameter_node_fields()
    bound = {w.property("SlicerParameterName"): w.objectName() for w in panel.findChildren(QWidget)
             if w.property("SlicerParameterName")}
    assert {"inputVolume", "outputSegmentation", "overlap", "fast", "show3D"} <= set(bound)
    unknown = sorted(set(bound) - fields)
    assert not unknown, f".ui binds parameters the parameter node does not have: {unknown}"


def test_panel_has_the_required_controls(panel):
    """The issue's panel: selectors, Segment, progress, log, 3D toggle, compare and review sections."""
    expected = {
        "inputVolumeSelector": qMRMLNodeComboBox, "modelSelector": QComboBox, "deviceSelector": QComboBox,
        "outputSegmentationSelector": qMRMLNodeComboBox, "referenceSegmentationSelector": qMRMLNodeComboBox,
        "compareTableView": qMRMLTableView, "uncertaintyThresholdSlider": ctkSliderWidget,
    }
    for name, cls in expected.items():
        assert isinstance(panel.findChild(QtCore.QObject, name), cls), name
    for name in ("segmentButton", "downloadWeightsButton", "localWeightsButton", "compareButton",
                 "createReviewSegmentButton", "progressBar", "stageLabel", "logTextEdit", "show3DCheckBox",
                 "fastModeCheckBox", "overlapSpinBox", "uncertaintyCheckBox", "modelInfoLabel",
                 "weightsStatusLabel", "deviceInfoLabel"):
        assert panel.findChild(QtCore.QObject, name) is not None, name
    output = panel.findChild(QtCore.QObject, "outputSegmentationSelector")
    assert output.property("noneEnabled") is True
    assert output.property("noneDisplay") == "Create new segmentation"
    assert panel.findChild(QtCore.QObject, "compareCollapsibleButton").collapsed is True
    assert panel.findChild(QtCore.QObject, "uncertaintyCollapsibleButton").collapsed is True
    assert panel.findChild(QtCore.QObject, "segmentButton").text() == "Segment"


def fill_like_a_session(panel) -> None:
    """Put the texts a user sees during a run into the panel, using the real catalogue and panel texts."""
    from UXNetSegmentLib.catalogue import list_models
    from UXNetSegmentSlicer import PanelText

    models = list_models()
    spec = next((m for m in models if m.name == "demo_brain"), models[0])
    find = lambda name: panel.findChild(QtCore.QObject, name)  # noqa: E731
    find("inputVolumeSelector").addItem("Colin27 T1")
    for m in models:
        find("modelSelector").addItem(m.title or m.name, m.name)
    find("modelSelector").setCurrentIndex(models.index(spec))
    find("modelInfoLabel").setText(PanelText.modelInfoHtml(spec))
    find("weightsStatusLabel").setText(PanelText.weightsStatus(spec))
    find("downloadWeightsButton").setEnabled(bool(spec.weights_url) and spec.weights_path() is None)  # as the widget
    for text in ("Auto", "CUDA (GPU)", "CPU"):
        find("deviceSelector").addItem(text)
    find("deviceInfoLabel").setText(PanelText.deviceText({}, torchPresent=True))
    find("outputSegmentationSelector").addItem("Create new segmentation")
    find("segmentButton").setText("Cancel")
    find("progressBar").setValue(420)
    find("stageLabel").setText(PanelText.progressText("inference", 0.42, "window 5/12"))
    find("logTextEdit").setMaximumHeight(70)
    find("logTextEdit").setPlainText(
        "Running: PythonSlicer -m UXNetSegmentLib segment input.nrrd -o result.seg.nrrd "
        f"--model {spec.name} --device auto --progress json")


def test_screenshot_of_the_panel(panel):
    fill_like_a_session(panel)
    host = QWidget()
    host.setObjectName("screenshotHost")
    layout = QVBoxLayout(host)
    layout.setContentsMargins(6, 6, 6, 6)
    layout.addWidget(panel)
    host.resize(440, 10)
    host.adjustSize()
    host.resize(440, host.sizeHint().height())
    image = host.grab()
    assert image.width() >= 400 and image.height() >= 400, (image.width(), image.height())
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert image.save(str(SCREENSHOT), "PNG")
    assert SCREENSHOT.stat().st_size > 5000
    # Not blank: the rendered panel has many distinct colours (text, frames, progress bar).
    rendered = image.toImage()
    colours = {rendered.pixel(x, y) for x in range(0, rendered.width(), 7) for y in range(0, rendered.height(), 7)}
    assert len(colours) > 10


def test_review_list_screenshot(qapp):
    """The Uncertainty / review section as the widget fills it after a run (rows of a real demo run)."""
    import json

    from UXNetSegmentSlicer import PanelText
    from UXNetSegmentSlicer.CompareLogic import ReviewRow

    panel = load_panel()  # its own copy: the panel screenshot reparents the shared one
    section = panel.findChild(QtCore.QObject, "uncertaintyCollapsibleButton")
    section.collapsed = False
    section.applyCollapsed()
    section.setFlat(False)
    section.setMaximumHeight(16777215)
    table = panel.findChild(QtCore.QObject, "reviewTableWidget")
    assert isinstance(table, QTableWidget) and table.columnCount() == 3
    assert [table.horizontalHeaderItem(c).text() for c in range(3)] == ["Segment", "Review score", "Above threshold"]
    rows = [ReviewRow(f"Segment_{i}", r["name"], r["score"], r["share"])
            for i, r in enumerate(json.loads(REVIEW_ROWS.read_text()))]
    cells = PanelText.reviewTableCells(rows)
    table.setRowCount(len(cells))
    for r, line in enumerate(cells):
        for c, text in enumerate(line):
            table.setItem(r, c, QTableWidgetItem(text))
    table.resizeColumnsToContents()
    assert table.item(0, 1).text() == f"{max(row.score for row in rows):.3f}"  # least certain first
    panel.findChild(QtCore.QObject, "uncertaintyCheckBox").setChecked(True)
    host = QWidget()
    layout = QVBoxLayout(host)
    layout.setContentsMargins(6, 6, 6, 6)
    section.setParent(host)
    layout.addWidget(section)
    host.resize(440, host.sizeHint().height())
    image = host.grab()
    assert image.width() >= 400 and image.height() >= 150, (image.width(), image.height())
    assert image.save(str(REVIEW_SCREENSHOT), "PNG")


def test_ui_file_is_designer_valid_xml():
    """Qt Designer in Slicer needs the custom-widget declarations for every Slicer class used."""
    text = UI_FILE.read_text()
    used = set(re.findall(r'<widget class="((?:qMRML|ctk)\w+)"', text))
    declared = set(re.findall(r"<customwidget>\s*<class>(\w+)</class>", text))
    assert used <= declared, sorted(used - declared)
