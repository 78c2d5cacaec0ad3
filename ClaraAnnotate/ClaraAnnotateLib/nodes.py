"""The MRML side of the conversions: volume nodes -> claraseg images, markups -> voxel indices, mask
deltas -> segments. Needs Slicer's MRML libraries, not Qt: it runs in Slicer and on slicer-core
(trame-slicer, tests). Every function works on the scene its nodes belong to (no ``slicer.mrmlScene``,
``slicer.app`` or ``slicer.modules``); call it on the thread that owns the scene. The arithmetic lives in
:mod:`.geometry` and :mod:`.segments`.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
import vtk.util.numpy_support

from claraseg.errors import ClarasegError, GeometryMismatchError
from claraseg.io import Image, MaskDelta

from . import geometry
from .segments import SegmentSpec

LABELMAP = "Binary labelmap"


class SegmentationWriteError(ClarasegError):
    """A result could not be written into a segment (or a segment could not be created)."""

    code = "segmentation_write"


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


def linear_transform_between(from_node, to_node) -> np.ndarray | None:
    """The 4x4 matrix from ``from_node``'s frame to ``to_node``'s (transform nodes; None = world), or None
    when a non-linear transform lies between them. Linearity is checked first: asking for the matrix of a
    non-linear transform logs errors in Slicer."""
    if from_node is to_node:
        return np.eye(4)
    for node in (from_node, to_node):
        if node is not None and not node.IsTransformToWorldLinear():
            general = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(from_node, to_node, general)
            linear = vtk.vtkTransform()
            if not slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(general, linear):
                return None  # e.g. the same non-linear warp above both nodes cancels out: then linear
            return matrix(linear.GetMatrix())
    m = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(from_node, to_node, m)
    return matrix(m)


def world_to_ijk(volume_node) -> np.ndarray | None:
    """World RAS -> voxel index of the volume, parent transforms included; None when a parent transform is
    not linear (then use :func:`world_points_to_ijk`, which handles it point by point)."""
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return geometry.world_to_ijk(ijk_to_ras(volume_node))
    m = linear_transform_between(None, parent)
    if m is None:
        return None
    return geometry.world_to_ijk(ijk_to_ras(volume_node), m)


def world_points_to_ijk(volume_node, points_ras, what: str = "point") -> np.ndarray:
    """World RAS points -> integer ``[i, j, k]`` of the volume (any parent transform, linear or not)."""
    size = volume_node.GetImageData().GetDimensions()
    m = world_to_ijk(volume_node)
    if m is None:
        general = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume_node.GetParentTransformNode(), general)
        local = np.array([general.TransformPoint(list(p)) for p in np.asarray(points_ras, dtype=float).reshape(-1, 3)])
        return geometry.world_points_to_ijk(local.reshape(-1, 3), geometry.world_to_ijk(ijk_to_ras(volume_node)),
                                            size, what)
    return geometry.world_points_to_ijk(points_ras, m, size, what)


def ijk_to_world(volume_node, ijk) -> list[float]:
    """World RAS of a voxel index ``[i, j, k]`` (parent transforms included, linear or not)."""
    local = ijk_to_ras(volume_node) @ np.array([float(ijk[0]), float(ijk[1]), float(ijk[2]), 1.0])
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return [float(v) for v in local[:3]]
    general = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, general)
    return [float(v) for v in general.TransformPoint([float(v) for v in local[:3]])]


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


def slice_views(scene) -> dict[str, np.ndarray]:
    """Slice node id -> SliceToRAS of the scene's slice views (the ones shown in the layout when the
    application says which are; every slice node otherwise)."""
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]
    mapped = [n for n in nodes if n.IsMappedInLayout()]
    return {n.GetID(): matrix(n.GetSliceToRAS()) for n in (mapped or nodes)}


def slice_axis_for_view(slice_node, volume_node) -> int:
    """Volume axis a slice view cuts across (raises ObliqueSliceError for oblique views)."""
    m = world_to_ijk(volume_node)
    if m is None:
        raise geometry.ObliqueSliceError("2D models need a linear transform above the volume; harden or remove it")
    return geometry.slice_axis(matrix(slice_node.GetSliceToRAS()), m)


def slice_axis_for_point(volume_node, point_ras) -> int | None:
    """The axis of the slice view a just-placed point lies in (markups do not say which view it came from)."""
    scene = volume_node.GetScene()
    spacing = min(volume_node.GetSpacing())
    node_id = geometry.pick_slice_view(slice_views(scene), point_ras, tolerance_mm=0.5 * spacing)
    if node_id is None:
        return None
    return slice_axis_for_view(scene.GetNodeByID(node_id), volume_node)


def segment_array(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """A segment on the volume's voxel grid, ``[k, j, i]`` uint8 (a copy), through a temporary label map
    in the segmentation's scene (``slicer.util.arrayFromSegmentBinaryLabelmap`` without its globals)."""
    scene = segmentation_node.GetScene()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__clara_temp__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise SegmentationWriteError(f"could not read segment '{segment_id}' of {segmentation_node.GetName()}")
        return np.array(slicer.util.arrayFromVolume(labelmap), copy=True).astype(np.uint8)
    finally:
        display = labelmap.GetDisplayNode()
        color = display.GetColorNode() if display is not None else None
        if color is not None and color.GetName().startswith("__clara_temp__"):
            scene.RemoveNode(color)
        scene.RemoveNode(labelmap)


def segment_mask_delta(segmentation_node, segment_id: str, volume_node) -> MaskDelta:
    """A segment on the volume's voxel grid, as the delta ``Session.set_mask`` takes (its bounding box)."""
    return MaskDelta.from_full((segment_array(segmentation_node, segment_id, volume_node) != 0).astype(np.uint8))


def segment_mtime(segmentation_node, segment_id: str) -> int:
    """Modification time of a segment's labelmap (changes when anyone paints it)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    rep = segment.GetRepresentation(LABELMAP) if segment is not None else None
    return int(rep.GetMTime()) if rep is not None else 0


def _box_image(delta: MaskDelta, values: np.ndarray, image_to_world: np.ndarray):
    """A box-sized ``vtkOrientedImageData`` (uint8) holding ``values`` ([k, j, i] of the box)."""
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(image_to_world))
    image.SetExtent(*geometry.vtk_extent(delta))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    voxels[:] = values.astype(np.uint8).ravel()
    image.Modified()
    return image


def write_delta(delta: MaskDelta, segmentation_node, segment_id: str, volume_node, editor_logic=None) -> None:
    """Write only the delta's box into a segment: inside the box the segment becomes the mask.

    With ``editor_logic`` (a ``vtkSlicerSegmentEditorLogic`` on the editor node the request came from) the
    result is applied exactly like an erase stroke then a paint stroke of the Segment Editor: through
    ``ModifySegmentByLabelmap`` (Remove, then Add), so the editor's masking settings hold: other segments
    are overwritten or not (overwrite mode), only the editable area and the editable intensity range of
    the source volume change. Without it (Slicer before 5.10 has no Qt-free editor logic) the box is
    written as-is with ``SetBinaryLabelmapToSegment`` (erase-in-box with ``MODE_MERGE_MIN``, then add with
    ``MODE_MERGE_MASK``; ``MODE_REPLACE`` would replace the whole segment by the box).

    The box goes in as a box-sized image on the volume's grid placed in the segmentation's frame, so the
    two nodes may sit under different (linear) parent transforms.
    """
    if delta.is_empty:
        return
    to_seg = linear_transform_between(volume_node.GetParentTransformNode(), segmentation_node.GetParentTransformNode())
    if to_seg is None:
        raise GeometryMismatchError(
            "the volume and the segmentation are under different non-linear transforms; "
            "put them under the same transform (Data module) or harden the transform")
    image_to_seg = geometry.volume_ijk_to_segmentation(ijk_to_ras(volume_node),
                                                       None if np.allclose(to_seg, np.eye(4)) else to_seg)
    mask = delta.mask != 0
    extent = geometry.vtk_extent(delta)
    if editor_logic is not None:
        logic = slicer.vtkSlicerSegmentEditorLogic
        for values, mode in ((~mask, logic.ModificationModeRemove), (mask, logic.ModificationModeAdd)):
            if values.any():
                editor_logic.ModifySegmentByLabelmap(segmentation_node, segment_id,
                                                     _box_image(delta, values, image_to_seg), mode, extent, True, False)
        return
    image = _box_image(delta, mask, image_to_seg)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for mode in (logic.MODE_MERGE_MIN, logic.MODE_MERGE_MASK):
        if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, mode, extent):
            raise SegmentationWriteError(f"could not write the result into segment '{segment_id}'")


def ensure_segment(segmentation_node, spec: SegmentSpec) -> str:
    """The id of the segment named ``spec.name`` (created, coloured, when missing).

    Works before any segmentations logic has registered its representation converters (a bare
    slicer-core scene): the segment is then built with an empty binary labelmap. Never returns ''."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
    if segment_id:
        segmentation.GetSegment(segment_id).SetColor(*spec.color)
        return segment_id
    source = segmentation.GetSourceRepresentationName()
    if slicer.vtkSegmentationConverterFactory.GetInstance().ConstructRepresentationObjectByRepresentation(source):
        segment_id = segmentation.AddEmptySegment("", spec.name, list(spec.color))
    elif source == LABELMAP:  # no converter rules registered: build the segment and its empty labelmap
        segment = slicer.vtkSegment()
        segment.SetName(spec.name)
        segment.SetColor(*spec.color)
        segment.AddRepresentation(LABELMAP, slicer.vtkOrientedImageData())
        if segmentation.AddSegment(segment, ""):
            segment_id = segmentation.GetSegmentIdBySegment(segment)
    if not segment_id:
        raise SegmentationWriteError(
            f"could not add segment '{spec.name}' to {segmentation_node.GetName()} (source representation "
            f"'{source}'): is the Segmentations module loaded?")
    return segment_id


def point_list(name: str, color: tuple[float, float, float], scene):
    """A point list for clicks (created when missing)."""
    node = scene.GetFirstNodeByName(name)
    if node is None or not node.IsA("vtkMRMLMarkupsFiducialNode"):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        node.SetControlPointLabelFormat(name[-1].lower() if name else "p")
    display = node.GetDisplayNode()
    if display is not None:  # a scene without the markups logic gives no display node
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetTextScale(0)
    return node
