"""Compare a predicted segmentation node with a reference segmentation node, and store review scores.

Importable with slicer-core alone (no ``qt``, ``ctk`` or ``slicer.app``), so it is tested headless.

* :meth:`CompareLogic.compare` exports both segmentations to labelmaps on the prediction's geometry (each
  layer separately, so overlapping segments keep their voxels), runs the engine's metric core
  (:func:`UXNetSegmentLib.compare.compare_label_arrays`: Dice, HD95, MSD, volumes, matching by terminology,
  name or value), fills a table node, makes a bar chart of Dice, and shows the reference as outlines.
* :meth:`CompareLogic.reviewScoresFromVolume` scores every segment from an uncertainty volume
  (:mod:`UXNetSegmentLib.review`) and writes the scores into segment tags (``UXNetSegment.ReviewScore``).

The prediction's geometry is its reference image geometry (what Slicer sets from the source volume), or a
volume node you pass; a segmentation without one uses its own labelmap grid, grown to cover the reference.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import slicer
import vtk

from UXNetSegmentLib.compare import ComparisonReport, SegmentInfo, compare_label_arrays, parse_terminology
from UXNetSegmentLib.errors import UXNetError
from UXNetSegmentLib.review import DEFAULT_THRESHOLD, ReviewStats, review_stats

REVIEW_SCORE_TAG = "UXNetSegment.ReviewScore"
REVIEW_SHARE_TAG = "UXNetSegment.ReviewShare"
REVIEW_SEGMENT_ID = "UXNetSegment_review"  # the "needs review" segment: never scored itself

# (column title, ComparisonRow attribute); the first two are text, the rest numbers.
TABLE_COLUMNS: List[Tuple[str, str]] = [
    ("segment", "segment"), ("matched by", "matched_by"), ("Dice", "dice"), ("HD95 mm", "hd95_mm"),
    ("MSD mm", "msd_mm"), ("volume pred ml", "volume_pred_ml"), ("volume ref ml", "volume_ref_ml"),
    ("rel. volume diff", "rel_volume_diff"), ("reference segment", "reference_segment"), ("status", "status")]
TEXT_COLUMNS = {"segment", "matched_by", "reference_segment", "status"}


@dataclass
class ReviewRow:
    """One line of the panel's review list."""

    segmentId: str
    name: str
    score: float                 # mean uncertainty on the boundary (0 certain ... 1 undecided)
    share: Optional[float]       # share of the segment's voxels above the threshold


@dataclass
class CompareResult:
    """What :meth:`CompareLogic.compare` produced: the numbers and the nodes that show them."""

    report: ComparisonReport
    tableNode: object
    seriesNode: object
    chartNode: object


def _segmentTerminology(segment) -> str:
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    value = vtk.reference("")  # Slicer < 5.8
    return str(value) if segment.GetTag(segment.GetTerminologyEntryTagName(), value) else ""


def _floatTag(segment, tag: str) -> Optional[float]:
    value = vtk.reference("")
    if not segment.GetTag(tag, value):
        return None
    try:
        return float(str(value))
    except ValueError:
        return None


def _segmentIds(segmentation) -> List[str]:
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


class CompareLogic:
    """Prediction vs reference in the MRML scene. ``scene`` defaults to ``slicer.mrmlScene``."""

    def __init__(self, scene=None):
        self._scene = scene

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # -- comparison ------------------------------------------------------------------------------------------
    def compare(self, predictionNode, referenceNode, geometryVolumeNode=None, tableNode=None, chartNode=None,
                showReferenceAsOutline: bool = True) -> CompareResult:
        """Compare two segmentation nodes on the prediction's grid; fill ``tableNode`` and ``chartNode``
        (created when None) and, by default, draw the reference as 2D outlines only."""
        for node, what in ((predictionNode, "prediction"), (referenceNode, "reference")):
            if node is None or not node.IsA("vtkMRMLSegmentationNode"):
                raise UXNetError(f"no {what} segmentation selected; choose a segmentation node as the {what}")
        if predictionNode is referenceNode:
            raise UXNetError("the prediction and the reference are the same node; choose another reference")
        temporary = []
        try:
            geometry = geometryVolumeNode
            if geometry is None:
                geometry = self._geometryNode(predictionNode, referenceNode)
                temporary.append(geometry)
            predLayers, predSegments = self.labelLayers(predictionNode, geometry, temporary)
            refLayers, refSegments = self.labelLayers(referenceNode, geometry, temporary)
            spacing = [abs(s) for s in geometry.GetSpacing()]
            report = compare_label_arrays(predLayers, predSegments, refLayers, refSegments, spacing)
        finally:
            for node in temporary:
                if node.GetScene() is not None:
                    self.scene.RemoveNode(node)
        report.prediction, report.reference = predictionNode.GetName(), referenceNode.GetName()
        tableNode = self.fillTable(report, tableNode, name=f"{predictionNode.GetName()} vs {referenceNode.GetName()}")
        seriesNode, chartNode = self.diceChart(tableNode, chartNode)
        if showReferenceAsOutline:
            self.showAsOutline(referenceNode)
        return CompareResult(report, tableNode, seriesNode, chartNode)

    def labelLayers(self, segmentationNode, geometryNode, temporary: Optional[list] = None
                    ) -> Tuple[List[np.ndarray], List[SegmentInfo]]:
        """One (k, j, i) label array per segmentation layer on ``geometryNode``'s grid, and the segments.

        Export numbers the segments of a layer 1..N in order; each :class:`SegmentInfo` keeps that number as
        ``value`` and the segment's own label value as ``label_value`` (used for matching by value).
        """
        segmentation = segmentationNode.GetSegmentation()
        layers: List[np.ndarray] = []
        segments: List[SegmentInfo] = []
        for layer in range(max(segmentation.GetNumberOfLayers(), 1)):
            ids = [i for i in _segmentIds(segmentation) if segmentation.GetLayerIndex(i) == layer]
            if not ids:
                continue
            layers.append(self._exportLayer(segmentationNode, layer, ids, geometryNode, temporary))
            for index, segmentId in enumerate(ids):
                segment = segmentation.GetSegment(segmentId)
                typeCode, modifierCode = parse_terminology(_segmentTerminology(segment))
                colour = segment.GetColor()
                segments.append(SegmentInfo(
                    name=segment.GetName(), value=index + 1, layer=len(layers) - 1, type_code=typeCode,
                    modifier_code=modifierCode, segment_id=segmentId, label_value=int(segment.GetLabelValue()),
                    color=tuple(int(round(255 * c)) for c in colour)))
        if not segments:
            raise UXNetError(f"'{segmentationNode.GetName()}' has no segments; choose a segmentation with segments")
        return layers, segments

    def _exportLayer(self, segmentationNode, layer: int, ids: List[str], geometryNode, temporary) -> np.ndarray:
        """The segments ``ids`` of one layer as a (k, j, i) array on ``geometryNode``'s grid, numbered 1..N."""
        image = segmentationNode.GetSegmentation().GetLayerDataObject(layer)
        if image is None or image.IsEmpty() or image.GetScalarRange()[1] == 0:
            # nothing drawn in this layer (Slicer cannot export an empty labelmap): all zeros
            dims = geometryNode.GetImageData().GetDimensions()
            return np.zeros((dims[2], dims[1], dims[0]), dtype=np.uint8)
        labelNode = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "UXNetSegment compare (temp)")
        labelNode.SetHideFromEditors(True)
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelNode, geometryNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
            if not ok or labelNode.GetImageData() is None or labelNode.GetImageData().GetPointData().GetScalars() \
                    is None:
                raise UXNetError(f"could not export '{segmentationNode.GetName()}' onto the comparison grid; "
                                 f"check that it has binary labelmap segments")
            return slicer.util.arrayFromVolume(labelNode).copy()
        finally:
            if temporary is not None:
                temporary.append(labelNode)
            else:
                self.scene.RemoveNode(labelNode)

    def _geometryNode(self, predictionNode, referenceNode):
        """A labelmap node with the prediction's geometry (temporary: the caller removes it)."""
        segmentation = predictionNode.GetSegmentation()
        name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        geometryString = segmentation.GetConversionParameter(name)
        image = slicer.vtkOrientedImageData()
        if geometryString:
            slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometryString, image, True,
                                                                      vtk.VTK_UNSIGNED_CHAR, 1)
        else:
            self._coveringGeometry(predictionNode, referenceNode, image)
        node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "UXNetSegment compare grid (temp)")
        node.SetHideFromEditors(True)
        slicer.vtkSlicerSegmentationsModuleLogic.CreateLabelmapVolumeFromOrientedImageData(image, node)
        return node

    @staticmethod
    def _coveringGeometry(predictionNode, referenceNode, image) -> None:
        """The prediction's labelmap grid (spacing, axes) with an extent covering both segmentations."""
        segmentation = predictionNode.GetSegmentation()
        layerImage = None
        for layer in range(segmentation.GetNumberOfLayers()):
            candidate = segmentation.GetLayerDataObject(layer)
            if candidate is not None and not candidate.IsEmpty():
                layerImage = candidate
                break
        if layerImage is None:
            raise UXNetError(f"'{predictionNode.GetName()}' has no labelmap geometry; set its reference "
                             f"geometry (Segmentations module) or pass the source volume")
        matrix = vtk.vtkMatrix4x4()
        layerImage.GetImageToWorldMatrix(matrix)
        toIjk = np.linalg.inv(slicer.util.arrayFromVTKMatrix(matrix))
        corners = []
        for node in (predictionNode, referenceNode):
            bounds = [0.0] * 6
            node.GetRASBounds(bounds)
            if bounds[0] > bounds[1]:
                continue  # empty segmentation
            for x in bounds[0:2]:
                for y in bounds[2:4]:
                    for z in bounds[4:6]:
                        corners.append((toIjk @ np.array([x, y, z, 1.0]))[:3])
        if not corners:
            raise UXNetError("both segmentations are empty; nothing to compare")
        lo = np.floor(np.min(corners, axis=0)).astype(int)
        hi = np.ceil(np.max(corners, axis=0)).astype(int)
        image.SetImageToWorldMatrix(matrix)
        image.SetExtent(int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)

    # -- presentation ----------------------------------------------------------------------------------------
    def fillTable(self, report: ComparisonReport, tableNode=None, name: str = "Comparison"):
        """Write ``report`` into a ``vtkMRMLTableNode`` (one row per segment pair; see ``TABLE_COLUMNS``).
        Missing segments show ``inf`` distances; nothing is NaN."""
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        wasModifying = tableNode.StartModify()
        table = tableNode.GetTable()
        table.Initialize()
        for title, attribute in TABLE_COLUMNS:
            column = vtk.vtkStringArray() if attribute in TEXT_COLUMNS else vtk.vtkDoubleArray()
            column.SetName(title)
            for row in report.rows:
                value = getattr(row, attribute)
                if attribute == "segment" and not value:
                    value = row.reference_segment
                column.InsertNextValue(value if attribute in TEXT_COLUMNS else float(value))
            table.AddColumn(column)
        for title, unit in (("HD95 mm", "mm"), ("MSD mm", "mm"), ("volume pred ml", "ml"), ("volume ref ml", "ml")):
            tableNode.SetColumnUnitLabel(title, unit)
        tableNode.SetColumnDescription("rel. volume diff", "(V pred - V ref) / V ref")
        tableNode.Modified()
        tableNode.EndModify(wasModifying)
        return tableNode

    def diceChart(self, tableNode, chartNode=None) -> Tuple[object, object]:
        """A bar plot series of the table's Dice column (labels: segment names) and a chart holding it."""
        seriesNode = None
        if chartNode is not None and chartNode.GetNumberOfPlotSeriesNodes():
            seriesNode = chartNode.GetNthPlotSeriesNode(0)
        if seriesNode is None:
            seriesNode = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{tableNode.GetName()} Dice")
        seriesNode.SetAndObserveTableNodeID(tableNode.GetID())
        seriesNode.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        seriesNode.SetXColumnName("")
        seriesNode.SetYColumnName("Dice")
        seriesNode.SetLabelColumnName("segment")
        seriesNode.SetColor(0.23, 0.46, 0.69)
        if chartNode is None:
            chartNode = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{tableNode.GetName()} chart")
        if chartNode.GetPlotSeriesNodeID() != seriesNode.GetID():
            chartNode.RemoveAllPlotSeriesNodeIDs()
            chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
        chartNode.SetTitle("Dice per segment")
        chartNode.SetXAxisTitle("segment")
        chartNode.SetYAxisTitle("Dice")
        chartNode.SetYAxisRangeAuto(False)
        chartNode.SetYAxisRange(0.0, 1.0)
        chartNode.SetLegendVisibility(False)
        return seriesNode, chartNode

    @staticmethod
    def showAsOutline(segmentationNode) -> None:
        """2D display of ``segmentationNode`` as outlines only (a display change; segments are untouched)."""
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        display = segmentationNode.GetDisplayNode()
        display.SetVisibility2DFill(False)
        display.SetVisibility2DOutline(True)

    # -- review scores ---------------------------------------------------------------------------------------
    @staticmethod
    def setReviewScores(segmentationNode, scores: Dict[str, float], shares: Optional[Dict[str, float]] = None
                        ) -> None:
        """Store ``{segmentId: score}`` as the ``UXNetSegment.ReviewScore`` tag (3 decimals) of each segment;
        segments not in ``scores`` lose a stale tag. ``shares`` (optional) go to ``UXNetSegment.ReviewShare``."""
        segmentation = segmentationNode.GetSegmentation()
        unknown = [s for s in scores if segmentation.GetSegment(s) is None]
        if unknown:
            raise UXNetError(f"no segment with ID {unknown[0]} in '{segmentationNode.GetName()}'; "
                             f"score the segments of this segmentation")
        for segmentId in _segmentIds(segmentation):
            segment = segmentation.GetSegment(segmentId)
            for tag, values in ((REVIEW_SCORE_TAG, scores), (REVIEW_SHARE_TAG, shares or {})):
                if segmentId in values and math.isfinite(values[segmentId]):
                    segment.SetTag(tag, f"{values[segmentId]:.3f}")
                elif segment.HasTag(tag):
                    segment.RemoveTag(tag)
        segmentationNode.Modified()

    @staticmethod
    def reviewScore(segment) -> Optional[float]:
        """A segment's stored review score, or None."""
        return _floatTag(segment, REVIEW_SCORE_TAG)

    @staticmethod
    def reviewShare(segment) -> Optional[float]:
        """A segment's stored share of voxels above the review threshold, or None."""
        return _floatTag(segment, REVIEW_SHARE_TAG)

    @classmethod
    def reviewRows(cls, segmentationNode) -> List[ReviewRow]:
        """The scored segments, least certain first: what the panel's review list shows."""
        if segmentationNode is None:
            return []
        segmentation = segmentationNode.GetSegmentation()
        rows = []
        for segmentId in cls.segmentsForReview(segmentationNode):
            segment = segmentation.GetSegment(segmentId)
            score = cls.reviewScore(segment)
            if score is not None:
                rows.append(ReviewRow(segmentId, segment.GetName(), score, cls.reviewShare(segment)))
        return rows

    @classmethod
    def segmentsForReview(cls, segmentationNode) -> List[str]:
        """Segment IDs ordered least certain first (segments without a score last, in their own order)."""
        segmentation = segmentationNode.GetSegmentation()
        ids = _segmentIds(segmentation)
        scored = [(cls.reviewScore(segmentation.GetSegment(i)), n, i) for n, i in enumerate(ids)]
        return [i for s, n, i in sorted(scored, key=lambda t: (t[0] is None, -(t[0] or 0.0), t[1]))]

    def reviewScoresFromVolume(self, segmentationNode, uncertaintyVolumeNode, threshold: float = DEFAULT_THRESHOLD,
                               writeTags: bool = True) -> Dict[str, ReviewStats]:
        """Score each segment from an uncertainty volume (see :mod:`UXNetSegmentLib.review`) on that volume's
        grid; with ``writeTags`` store the scores as segment tags. Empty segments get no score."""
        if uncertaintyVolumeNode is None or uncertaintyVolumeNode.GetImageData() is None:
            raise UXNetError("no uncertainty volume; run the segmentation with 'uncertainty' switched on")
        uncertainty = slicer.util.arrayFromVolume(uncertaintyVolumeNode)
        layers, segments = self.labelLayers(segmentationNode, uncertaintyVolumeNode)
        result: Dict[str, ReviewStats] = {}
        for layerIndex, labels in enumerate(layers):
            inLayer = [s for s in segments if s.layer == layerIndex and s.segment_id != REVIEW_SEGMENT_ID]
            stats = review_stats(labels, uncertainty, [s.value for s in inLayer], threshold)
            for s in inLayer:
                if s.value in stats:
                    result[s.segment_id] = stats[s.value]
        if writeTags:
            self.setReviewScores(segmentationNode, {k: v.score for k, v in result.items()},
                                 {k: v.share_above for k, v in result.items()})
        return result

