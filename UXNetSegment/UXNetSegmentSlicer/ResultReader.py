"""Read the engine's output files into VTK/MRML objects with Python readers only.

Slicer's ITK-based NRRD reader aborts the whole process on a truncated file (an uncaught C++
exception), so the engine's files are read with slicerio / SimpleITK, which raise Python errors that
become one-line :class:`UXNetError` messages instead.
"""
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

import slicer
from vtk.util.numpy_support import vtk_to_numpy

from UXNetSegmentLib.errors import UXNetError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def orientedImageFromArray(voxelsKji: np.ndarray, ijkToRas: np.ndarray):
    """A ``vtkOrientedImageData`` holding ``voxelsKji`` (shape (K, J, I)) placed by the 4x4 ``ijkToRas``."""
    k, j, i = voxelsKji.shape
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(i, j, k)
    image.AllocateScalars(_vtkType(voxelsKji.dtype), 1)
    vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(voxelsKji).ravel()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
    return image


def _vtkType(dtype) -> int:
    import vtk

    types = {np.dtype(np.uint8): vtk.VTK_UNSIGNED_CHAR, np.dtype(np.uint16): vtk.VTK_UNSIGNED_SHORT,
             np.dtype(np.int16): vtk.VTK_SHORT, np.dtype(np.int32): vtk.VTK_INT,
             np.dtype(np.float32): vtk.VTK_FLOAT, np.dtype(np.float64): vtk.VTK_DOUBLE}
    if np.dtype(dtype) not in types:
        raise UXNetError(f"the engine wrote voxels of type {dtype}, which the module cannot import; "
                         f"update the extension")
    return types[np.dtype(dtype)]


def readEngineSegmentation(path: Path) -> Tuple[object, Dict[int, str]]:
    """The label layer of an engine ``.seg.nrrd`` as one ``vtkOrientedImageData`` (RAS), plus value -> name.

    The engine writes a single shared layer whose voxel values are the model's label values.
    """
    try:
        import slicerio
    except ImportError:
        raise UXNetError("slicerio is not installed in Slicer's Python; click Segment again to install the "
                         "engine's packages") from None
    try:
        data = slicerio.read_segmentation(str(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged result file
        raise UXNetError(f"the engine's result {Path(path).name} could not be read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); run again, or report this") from None
    voxels = np.asarray(data["voxels"])
    if voxels.ndim != 3:
        raise UXNetError(f"the engine's result has {voxels.ndim} dimensions, expected one 3D label layer; "
                         f"update the extension")
    ijkToRas = LPS_TO_RAS @ np.asarray(data["ijkToLPS"], dtype=float)
    names = {int(s["labelValue"]): str(s.get("name", "")) for s in data.get("segments", [])}
    return orientedImageFromArray(voxels.transpose(2, 1, 0), ijkToRas), names


def readScalarVolume(path: Path, name: str):
    """A new (not yet added) ``vtkMRMLScalarVolumeNode`` with the voxels and geometry of ``path``."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise UXNetError(f"{Path(path).name} could not be read ({str(exc).strip().splitlines()[-1]}); "
                         f"run again") from None
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    ijkToLps[:3, 3] = image.GetOrigin()
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(LPS_TO_RAS @ ijkToLps))
    return node
