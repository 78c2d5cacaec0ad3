"""Training data out of the Slicer scene: each volume and its segmentation written as a NIfTI pair.
Needs Slicer (main thread only); everything it computes is in ClaraAnnotateLib and claraseg.io."""

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
    scene = scene or slicer.mrmlScene
    pairs = []
    for seg in slicer.util.getNodesByClass("vtkMRMLSegmentationNode", scene):
        ref = seg.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        # IsA matches subclasses: a label map (e.g. the one a segmentation was imported from) is no image
        if (ref is not None and ref.IsA("vtkMRMLScalarVolumeNode") and not ref.IsA("vtkMRMLLabelMapVolumeNode")
                and seg.GetSegmentation().GetNumberOfSegments()):
            pairs.append((ref, seg))
    return pairs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "case"


def export_case(volume_node, segmentation_node, folder: str) -> Case:
    """Write ``<name>_image.nii.gz`` and ``<name>_label.nii.gz`` (segments -> values 1..n on the volume's
    grid, names in the datalist)."""
    os.makedirs(folder, exist_ok=True)
    image = nodes.image_from_volume(volume_node)
    ids = vtk.vtkStringArray()
    segmentation_node.GetSegmentation().GetSegmentIDs(ids)
    names = {}
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__clara_export__")
    try:
        if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap,
                                                                                   volume_node):
            raise TrainingDataError(f"{segmentation_node.GetName()}: exporting the segments failed")
        labels = np.array(slicer.util.arrayFromVolume(labelmap), copy=True).astype(np.uint8)
    finally:
        if labelmap.GetDisplayNode():
            slicer.mrmlScene.RemoveNode(labelmap.GetDisplayNode().GetColorNode())
        slicer.mrmlScene.RemoveNode(labelmap)
    for n in range(ids.GetNumberOfValues()):
        segment = segmentation_node.GetSegmentation().GetSegment(ids.GetValue(n))
        names[n + 1] = label_key(segment.GetName())
    if not labels.any():
        raise TrainingDataError(f"{segmentation_node.GetName()}: every segment is empty; draw something first")
    base = _safe(f"{volume_node.GetName()}_{segmentation_node.GetName()}")
    image_path = os.path.join(folder, base + "_image.nii.gz")
    label_path = os.path.join(folder, base + "_label.nii.gz")
    write_image(image, image_path)
    write_image(image.with_array(labels, labels={v: LabelInfo(n) for v, n in names.items()}), label_path)
    return Case(image_path, label_path, names, base)
