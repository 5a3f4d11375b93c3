"""Slicer-side code of the UXNetSegment module.

Everything here except the widget helpers imports with slicer-core alone (no ``qt``/``ctk``), so it is
tested headless: ``Parameters`` (what to run), ``ProcessRunner`` (the engine's child process),
``SegmentationLogic`` (volume -> engine -> segmentation node) and ``InstallLogic`` (dependencies in Slicer).
"""
