"""Training data out of the Slicer scene: each volume and its segmentation written as a NIfTI pair.
Needs Slicer's MRML libraries, not Qt; works on the scene the nodes belong to. Everything it computes is
in ClaraAnnotateLib and claraseg.io."""

from __future__ import annotations

import os
import re

import numpy as np
import slicer
import vtk
from ClaraAnnotateLib import nodes
from ClaraAnnotateLib.segments import label_key

from claraseg.errors import TrainingDataError
from claraseg.io import LabelInfo, write_image

from .jobs import Case


def segmentation_pairs(scene=None) -> list[tuple]:
    """(volume, segmentation) for every segmentation with a reference volume and at least one segment."""
    scene = scene if scene is not None else slicer.mrmlScene
    pairs = []
    for seg in slicer.util.getNodesByClass("vtkMRMLSegmentationNode", scene):
        ref = seg.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        # IsA matches subclasses: a label map (e.g. the one a segmentation was imported from) is no image
        if (ref is not None and ref.IsA("vtkMRMLScalarVolumeNode") and not ref.IsA("vtkMRMLLabelMapVolumeNode")
                and seg.GetSegmentation().GetNumberOfSegments()):
            pairs.append((ref, seg))
    return pairs


def case_rows(pairs) -> list[tuple[str, str]]:
    """What the cases table shows per pair: the volume's name, the segmentation's name and segment count."""
    return [(volume.GetName(), f"{seg.GetName()} ({seg.GetSegmentation().GetNumberOfSegments()} segments)")
            for volume, seg in pairs]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "case"


def label_array(volume_node, segmentation_node) -> tuple[np.ndarray, dict[int, str]]:
    """Every segment on the volume's grid as values 1..n (``[k, j, i]`` uint8) and ``{value: label name}``."""
    scene = segmentation_node.GetScene()
    ids = vtk.vtkStringArray()
    segmentation_node.GetSegmentation().GetSegmentIDs(ids)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__clara_export__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise TrainingDataError(f"{segmentation_node.GetName()}: exporting the segments failed")
        labels = np.array(slicer.util.arrayFromVolume(labelmap), copy=True).astype(np.uint8)
    finally:
        display = labelmap.GetDisplayNode()
        color = display.GetColorNode() if display is not None else None
        if color is not None and color.GetName().startswith("__clara_export__"):
            scene.RemoveNode(color)
        scene.RemoveNode(labelmap)
    names = {n + 1: label_key(segmentation_node.GetSegmentation().GetSegment(ids.GetValue(n)).GetName())
             for n in range(ids.GetNumberOfValues())}
    return labels, names


def export_case(volume_node, segmentation_node, folder: str) -> Case:
    """Write ``<name>_image.nii.gz`` and ``<name>_label.nii.gz`` (segments -> values 1..n on the volume's
    grid, names in the datalist)."""
    os.makedirs(folder, exist_ok=True)
    image = nodes.image_from_volume(volume_node)
    labels, names = label_array(volume_node, segmentation_node)
    if not labels.any():
        raise TrainingDataError(f"{segmentation_node.GetName()}: every segment is empty; draw something first")
    base = _safe(f"{volume_node.GetName()}_{segmentation_node.GetName()}")
    image_path = os.path.join(folder, base + "_image.nii.gz")
    label_path = os.path.join(folder, base + "_label.nii.gz")
    write_image(image, image_path)
    write_image(image.with_array(labels, labels={v: LabelInfo(n) for v, n in names.items()}), label_path)
    return Case(image_path, label_path, names, base)


def export_cases(pairs, folder: str) -> list[Case]:
    return [export_case(volume, seg, folder) for volume, seg in pairs]
