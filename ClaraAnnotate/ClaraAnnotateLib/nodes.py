"""The MRML side of the conversions: volume nodes -> claraseg images, markups -> voxel indices, mask
deltas -> segments. The only module of this package that needs Slicer; call it on the main thread only.
The arithmetic lives in :mod:`.geometry` and :mod:`.segments`, tested without Slicer.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
import vtk.util.numpy_support

from claraseg.errors import GeometryMismatchError
from claraseg.io import Image, MaskDelta

from . import geometry
from .segments import SegmentSpec

LABELMAP = "Binary labelmap"


def matrix(vtk_matrix) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(vtk_matrix)


def ijk_to_ras(volume_node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return matrix(m)


def image_key(volume_node) -> tuple:
    """Identifies the voxels a session was opened with: node, voxel modification time, geometry."""
    return (volume_node.GetID(), volume_node.GetImageData().GetMTime(), tuple(np.round(ijk_to_ras(volume_node), 6).ravel()))


def image_from_volume(volume_node) -> Image:
    """A copy of the volume's voxels and geometry (the worker thread must not read VTK memory)."""
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    return geometry.image_from_array(array, ijk_to_ras(volume_node), metadata={"name": volume_node.GetName()})


def world_to_ijk(volume_node) -> np.ndarray | None:
    """World RAS -> voxel index of the volume, parent transforms included; None when a parent transform is
    not linear (then use :func:`world_points_to_ijk`, which handles it point by point)."""
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return geometry.world_to_ijk(ijk_to_ras(volume_node))
    m = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, m):
        return None
    return geometry.world_to_ijk(ijk_to_ras(volume_node), matrix(m))


def world_points_to_ijk(volume_node, points_ras, what: str = "point") -> np.ndarray:
    """World RAS points -> integer ``[i, j, k]`` of the volume (any parent transform, linear or not)."""
    size = volume_node.GetImageData().GetDimensions()
    m = world_to_ijk(volume_node)
    if m is None:
        general = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume_node.GetParentTransformNode(), general)
        local = np.array([general.TransformPoint(list(p)) for p in np.asarray(points_ras).reshape(-1, 3)])
        return geometry.world_points_to_ijk(local, geometry.world_to_ijk(ijk_to_ras(volume_node)), size, what)
    return geometry.world_points_to_ijk(points_ras, m, size, what)


def markups_world_points(markups_node) -> np.ndarray:
    """Defined control points of a point list, world RAS (N x 3)."""
    if markups_node is None:
        return np.zeros((0, 3))
    pts = []
    for i in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(i) == markups_node.PositionDefined:
            p = [0.0, 0.0, 0.0]
            markups_node.GetNthControlPointPositionWorld(i, p)
            pts.append(p)
    return np.array(pts, dtype=np.float64).reshape(-1, 3)


def slice_views() -> dict[str, np.ndarray]:
    """Slice view name -> SliceToRAS of every slice view in the layout."""
    lm = slicer.app.layoutManager()
    views = {}
    if lm is None:
        return views
    for name in lm.sliceViewNames():
        widget = lm.sliceWidget(name)
        if widget is not None:
            views[name] = matrix(widget.mrmlSliceNode().GetSliceToRAS())
    return views


def slice_axis_for_view(slice_node, volume_node) -> int:
    """Volume axis a slice view cuts across (raises ObliqueSliceError for oblique views)."""
    m = world_to_ijk(volume_node)
    if m is None:
        raise geometry.ObliqueSliceError("2D models need a linear transform above the volume; harden or remove it")
    return geometry.slice_axis(matrix(slice_node.GetSliceToRAS()), m)


def slice_axis_for_point(volume_node, point_ras) -> int | None:
    """The axis of the slice view a just-placed point lies in (markups do not say which view it came from)."""
    spacing = min(volume_node.GetSpacing())
    views = slice_views()
    name = geometry.pick_slice_view(views, point_ras, tolerance_mm=0.5 * spacing)
    if name is None:
        return None
    return slice_axis_for_view(slicer.app.layoutManager().sliceWidget(name).mrmlSliceNode(), volume_node)


def segment_mask_delta(segmentation_node, segment_id: str, volume_node) -> MaskDelta:
    """A segment on the volume's voxel grid, as the delta ``Session.set_mask`` takes (its bounding box)."""
    arr = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
    return MaskDelta.from_full((arr != 0).astype(np.uint8))


def segment_mtime(segmentation_node, segment_id: str) -> int:
    """Modification time of a segment's labelmap (changes when anyone paints it)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    rep = segment.GetRepresentation(LABELMAP) if segment is not None else None
    return int(rep.GetMTime()) if rep is not None else 0


def write_delta(delta: MaskDelta, segmentation_node, segment_id: str, volume_node) -> None:
    """Write only the delta's box into a segment (inside the box the segment becomes the mask).

    The box goes in as a box-sized ``vtkOrientedImageData`` on the volume's grid, placed in the
    segmentation's frame (different parent transforms allowed), through ``SetBinaryLabelmapToSegment``
    restricted to the box's extent: first ``MODE_MERGE_MIN`` (the segment's voxels in the box that the
    mask does not hold are erased), then ``MODE_MERGE_MASK`` (the mask's voxels are added): the Segment
    Editor's own "set" (``vtkSlicerSegmentEditorLogic``), with its erase step kept inside the box too.
    ``MODE_REPLACE`` would not do: it replaces the whole segment by the
    box (``vtkSegmentationModifier::AppendLabelmapToSegment`` copies the modifier over the segment's
    labelmap, or clears a segment that shares its layer), so everything outside the box would be lost.
    """
    if delta.is_empty:
        return
    vol_parent = volume_node.GetParentTransformNode()
    seg_parent = segmentation_node.GetParentTransformNode()
    to_seg = None
    if vol_parent is not seg_parent:
        m = vtk.vtkMatrix4x4()
        if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(vol_parent, seg_parent, m):
            raise GeometryMismatchError(
                "the volume and the segmentation are under different non-linear transforms; "
                "put them under the same transform (Data module) or harden the transform")
        to_seg = matrix(m)
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(
        geometry.volume_ijk_to_segmentation(ijk_to_ras(volume_node), to_seg)))
    extent = geometry.vtk_extent(delta)
    image.SetExtent(*extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    voxels[:] = (delta.mask != 0).astype(np.uint8).ravel()
    image.Modified()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for mode in (logic.MODE_MERGE_MIN, logic.MODE_MERGE_MASK):
        if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, mode, extent):
            raise RuntimeError(f"could not write the result into segment '{segment_id}'")


def ensure_segment(segmentation_node, spec: SegmentSpec) -> str:
    """The id of the segment named ``spec.name`` (created, coloured, when missing)."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
    if not segment_id:
        segment_id = segmentation.AddEmptySegment("", spec.name, list(spec.color))
    else:
        segmentation.GetSegment(segment_id).SetColor(*spec.color)
    return segment_id


def point_list(name: str, color: tuple[float, float, float], scene=None):
    """A point list for clicks (created hidden from the Data tree's clutter when missing)."""
    scene = scene or slicer.mrmlScene
    node = scene.GetFirstNodeByName(name)
    if node is None or not node.IsA("vtkMRMLMarkupsFiducialNode"):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        node.SetControlPointLabelFormat(name[-1].lower() if name else "p")
    display = node.GetDisplayNode()
    display.SetSelectedColor(*color)
    display.SetColor(*color)
    display.SetTextScale(0)
    return node
