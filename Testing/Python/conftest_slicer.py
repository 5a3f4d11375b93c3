"""Shared fixtures for tests on real MRML: a headless stand-in for the Slicer application.

slicer-core (PyPI) has the real MRML scene and module logics but no ``slicer.app``, ``slicer.mrmlScene``
or ``slicer.modules``. :func:`make_headless_slicer` builds the real logics (Volumes, Segmentations,
Terminologies, SubjectHierarchy) on one scene and exposes them the way Slicer does, so ``slicer.util``
helpers and our logic code run unchanged. This is the only stand-in: every class behind it is real.

Use from a test module (or from ``conftest.py``)::

    from conftest_slicer import slicer_app, mrml_scene  # noqa: F401  (pytest fixtures)
"""
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["HeadlessSlicer", "MODULE_DIR", "REPO", "make_headless_slicer", "mrml_scene", "node_ids", "slicer_app"]

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "UXNetSegment"
TERMINOLOGY_FILE = REPO / "Resources" / "Terminology" / "UXNetSegment.term.json"

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # UXNetSegmentLib and UXNetSegmentSlicer, as inside Slicer


@dataclass
class HeadlessSlicer:
    """The scene and the module logics of a headless Slicer session."""

    scene: object
    applicationLogic: object
    volumes: object
    segmentations: object
    terminologies: object
    subjectHierarchy: object


def make_headless_slicer() -> HeadlessSlicer:
    """Build a scene with Slicer's real module logics and install it as ``slicer.mrmlScene``/``slicer.modules``.

    The Terminologies logic reads its share folder before it sees the scene; we give it an empty folder
    (slicer-core ships no default terminologies) and load the extension's own ``.term.json`` afterwards.
    """
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    logics = {}
    share = tempfile.mkdtemp(prefix="uxnet-terms-")
    classes = [("Volumes", slicer.vtkSlicerVolumesLogic),
               ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
               ("Terminologies", slicer.vtkSlicerTerminologiesModuleLogic),
               ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)]
    for name, cls in classes:
        logic = cls()
        if name == "Terminologies":
            logic.SetModuleShareDirectory(share)
        previous = vtk.vtkObject.GetGlobalWarningDisplay()
        vtk.vtkObject.SetGlobalWarningDisplay(0)  # the missing default terminologies are expected here
        try:
            logic.SetMRMLScene(scene)
        finally:
            vtk.vtkObject.SetGlobalWarningDisplay(previous)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{
        name.lower(): types.SimpleNamespace(logic=(lambda logic=logic: logic)) for name, logic in logics.items()})
    return HeadlessSlicer(scene, app, logics["Volumes"], logics["Segmentations"], logics["Terminologies"],
                          logics["SubjectHierarchy"])


@pytest.fixture(scope="session")
def slicer_app() -> HeadlessSlicer:
    """One headless Slicer for the whole session (building it takes about 2 s)."""
    return make_headless_slicer()


def node_ids(scene) -> list:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture
def mrml_scene(slicer_app):
    """The session's scene; every node a test adds is removed again afterwards."""
    before = set(node_ids(slicer_app.scene))
    yield slicer_app.scene
    for node_id in node_ids(slicer_app.scene):
        node = slicer_app.scene.GetNodeByID(node_id)
        if node_id not in before and node is not None:
            slicer_app.scene.RemoveNode(node)
