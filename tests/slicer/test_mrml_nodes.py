"""ClaraAnnotateLib.nodes on Slicer's real MRML libraries (slicer-core): world -> IJK under linear and
non-linear parent transforms, segment reads and writes (with the Segment Editor's masking settings),
segment creation on a bare scene, slice views."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from claraseg.errors import GeometryMismatchError
from claraseg.io import MaskDelta

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def nodes(slicer_app):
    from ClaraAnnotateLib import nodes

    return nodes


def SegmentSpec(value, name, color):
    from ClaraAnnotateLib.segments import SegmentSpec as Spec

    return Spec(value, name, color)



def _oblique(phantom_pair, build):
    image, label = phantom_pair
    return image, label, build.image_volume(image, "phantom")


def _slicer_ras_to_ijk(volume, world):
    """Slicer's own answer: world -> volume frame through the transform tree, then GetRASToIJKMatrix."""
    import slicer
    import vtk

    general = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume.GetParentTransformNode(), general)
    local = general.TransformPoint(list(world))
    m = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(m)
    return np.rint(m.MultiplyPoint([*local, 1.0])[:3]).astype(int)


def test_world_to_ijk_matches_slicer_under_nested_linear_transforms(phantom_pair, build, nodes):
    image, _label, volume = _oblique(phantom_pair, build)
    rng = np.random.default_rng(0)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    outer = np.eye(4)
    outer[:3, :3], outer[:3, 3] = rot, [12.0, -30.0, 7.5]
    inner = np.diag([1.1, 0.9, 1.0, 1.0])
    inner[:3, 3] = [-4.0, 2.0, 9.0]
    volume.SetAndObserveTransformNodeID(build.linear_transform(inner, parent=build.linear_transform(outer)).GetID())
    ijk = np.stack([rng.integers(0, s, 20) for s in image.size_ijk], axis=1)
    world = np.array([nodes.ijk_to_world(volume, p) for p in ijk])
    np.testing.assert_array_equal(nodes.world_points_to_ijk(volume, world), ijk)
    np.testing.assert_array_equal([_slicer_ras_to_ijk(volume, w) for w in world], ijk)


def test_non_linear_parent_transform_is_exact_and_silent(phantom_pair, build, nodes, capfd):
    image, _label, volume = _oblique(phantom_pair, build)
    warp = build.warp_transform(6.0, parent=build.linear_transform(np.diag([1.0, 1.0, 1.0, 1.0])))
    volume.SetAndObserveTransformNodeID(warp.GetID())
    seg = build.segmentation(volume, "seg")
    seg.SetAndObserveTransformNodeID(warp.GetID())
    capfd.readouterr()
    assert nodes.world_to_ijk(volume) is None
    ijk = np.array([[s // 2 for s in image.size_ijk], [3, 4, 5], [s - 2 for s in image.size_ijk]])
    world = np.array([nodes.ijk_to_world(volume, p) for p in ijk])
    assert np.abs(world - (volume_ras := (nodes.ijk_to_ras(volume) @ np.c_[ijk, np.ones(3)].T).T[:, :3])).max() > 0.5, \
        volume_ras  # the warp really moves the points
    np.testing.assert_array_equal(nodes.world_points_to_ijk(volume, world), ijk)
    np.testing.assert_array_equal([_slicer_ras_to_ijk(volume, w) for w in world], ijk)
    # the same warp above the volume and the segmentation: a result is written without complaint
    seg_id = nodes.ensure_segment(seg, SegmentSpec(1, "obj", (1.0, 0.0, 0.0)))
    mask = np.ones((2, 3, 4), np.uint8)
    nodes.write_delta(MaskDelta((3, 4, 5), (7, 7, 7), mask, image.size_ijk), seg, seg_id, volume)
    assert nodes.segment_array(seg, seg_id, volume).sum() == mask.sum()
    err = capfd.readouterr().err
    assert "ERR|" not in err and "WARN|" not in err, err


def test_write_refuses_volume_and_segmentation_under_different_warps(phantom_pair, build, nodes):
    image, _label, volume = _oblique(phantom_pair, build)
    seg = build.segmentation(volume, "seg")
    volume.SetAndObserveTransformNodeID(build.warp_transform(5.0).GetID())
    seg_id = nodes.ensure_segment(seg, SegmentSpec(1, "obj", (1.0, 0.0, 0.0)))
    with pytest.raises(GeometryMismatchError, match="non-linear"):
        nodes.write_delta(MaskDelta((1, 1, 1), (3, 3, 3), np.ones((2, 2, 2), np.uint8), image.size_ijk), seg, seg_id,
                          volume)


def test_write_delta_round_trips_and_keeps_voxels_outside_the_box(build, nodes):
    import slicer

    arr = np.zeros((12, 16, 20), np.int16)
    volume = build.volume(arr, np.diag([1.5, 1.2, 2.0, 1.0]))
    seg, a = build.segmentation(volume, "seg", ["a"])
    before = np.zeros(arr.shape, np.uint8)
    before[1:11, 1:15, 1:19] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(before, seg, a, volume)
    mask = np.zeros((4, 6, 8), np.uint8)
    mask[1:3, 2:5, 3:7] = 1
    delta = MaskDelta((5, 4, 3), (13, 10, 7), mask, (20, 16, 12))
    nodes.write_delta(delta, seg, a, volume)
    expected = before.copy()
    expected[3:7, 4:10, 5:13] = mask
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, a, volume), expected)
    np.testing.assert_array_equal(nodes.segment_array(seg, a, volume), expected)
    d = nodes.segment_mask_delta(seg, a, volume)
    assert d.start == (1, 1, 1) and d.stop == (19, 15, 11)


def _masking_scene(build):
    """A volume with intensity = 10 * i, segment 'a' (to write) and 'b' (a block the write overlaps)."""
    import slicer

    arr = np.broadcast_to((np.arange(20) * 10).astype(np.int16), (12, 16, 20)).copy()
    volume = build.volume(arr, np.diag([1.5, 1.2, 2.0, 1.0]))
    seg, a, b = build.segmentation(volume, "seg", ["a", "b"])
    b_mask = np.zeros(arr.shape, np.uint8)
    b_mask[2:10, 2:14, 10:18] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(b_mask, seg, b, volume)
    editor = build.editor_node(volume, seg, a)
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(build.scene)
    logic.SetSegmentEditorNode(editor)
    full = np.zeros(arr.shape, np.uint8)
    full[4:6, 4:8, 4:14] = 1  # the result: a box reaching into 'b'
    return volume, seg, a, b, b_mask, editor, logic, full


def _write(nodes, volume, seg, a, full, logic):
    """Write the box [4:14, 4:8, 4:6] of ``full`` into 'a'; return the segments 'a' and 'b' afterwards."""
    delta = MaskDelta((4, 4, 4), (14, 8, 6), full[4:6, 4:8, 4:14], (20, 16, 12))
    nodes.write_delta(delta, seg, a, volume, editor_logic=logic)
    b = seg.GetSegmentation().GetSegmentIdBySegmentName("b")
    return nodes.segment_array(seg, a, volume), nodes.segment_array(seg, b, volume)


def test_write_delta_overwrites_other_segments_by_default_like_a_paint_stroke(build, nodes):
    volume, seg, a, b, b_mask, editor, logic, full = _masking_scene(build)
    assert editor.GetOverwriteMode() == editor.OverwriteAllSegments
    got_a, got_b = _write(nodes, volume, seg, a, full, logic)
    np.testing.assert_array_equal(got_a, full)
    np.testing.assert_array_equal(got_b, b_mask & ~full.astype(bool))


def test_write_delta_overlaps_when_the_editor_allows_overlap(build, nodes):
    volume, seg, a, b, b_mask, editor, logic, full = _masking_scene(build)
    editor.SetOverwriteMode(editor.OverwriteNone)
    got_a, got_b = _write(nodes, volume, seg, a, full, logic)
    np.testing.assert_array_equal(got_a, full)
    np.testing.assert_array_equal(got_b, b_mask)


def test_write_delta_keeps_to_the_editable_area(build, nodes):
    import slicer

    volume, seg, a, b, b_mask, editor, logic, full = _masking_scene(build)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    got_a, got_b = _write(nodes, volume, seg, a, full, logic)
    np.testing.assert_array_equal(got_a, full & ~b_mask.astype(bool))
    np.testing.assert_array_equal(got_b, b_mask)


def test_write_delta_keeps_to_the_editable_intensity_range(build, nodes):
    volume, seg, a, b, b_mask, editor, logic, full = _masking_scene(build)
    editor.SetOverwriteMode(editor.OverwriteNone)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(55, 105)  # i = 6..10
    got_a, _got_b = _write(nodes, volume, seg, a, full, logic)
    expected = full.copy()
    expected[:, :, :6] = 0
    expected[:, :, 11:] = 0
    np.testing.assert_array_equal(got_a, expected)


def test_write_delta_erases_only_inside_the_editable_area(build, nodes):
    """Clearing voxels obeys the editable area too (an erase stroke of the editor)."""
    import slicer

    volume, seg, a, b, b_mask, editor, logic, full = _masking_scene(build)
    editor.SetOverwriteMode(editor.OverwriteNone)
    _write(nodes, volume, seg, a, full, logic)  # a = the box
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(-1, 75)  # i <= 7 editable
    got_a, _ = _write(nodes, volume, seg, a, np.zeros_like(full), logic)
    expected = full.copy()
    expected[:, :, :8] = 0
    np.testing.assert_array_equal(got_a, expected)
    assert slicer.vtkSlicerSegmentEditorLogic.ModificationModeRemove  # the Remove step ran


def test_segment_editor_undo_restores_the_state_before_a_write(build, nodes):
    volume, seg, a, b, b_mask, editor, logic, full = _masking_scene(build)
    assert logic.SaveStateForUndo()
    _write(nodes, volume, seg, a, full, logic)
    logic.Undo()
    assert nodes.segment_array(seg, a, volume).sum() == 0
    np.testing.assert_array_equal(nodes.segment_array(seg, b, volume), b_mask)
    logic.Redo()
    np.testing.assert_array_equal(nodes.segment_array(seg, a, volume), full)


BARE_SCENE = """
import sys
sys.path[:0] = {paths!r}
import slicer
from ClaraAnnotateLib import nodes
from ClaraAnnotateLib.segments import SegmentSpec
scene = slicer.vtkMRMLScene()
seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
first = nodes.ensure_segment(seg, SegmentSpec(1, "spleen", (0.6, 0.4, 0.6)))
again = nodes.ensure_segment(seg, SegmentSpec(1, "spleen", (0.5, 0.5, 0.5)))
assert first and first == again, (first, again)
assert seg.GetSegmentation().GetNumberOfSegments() == 1
assert seg.GetSegmentation().GetSegment(first).GetName() == "spleen"
assert seg.GetSegmentation().GetSegment(first).GetRepresentation("Binary labelmap") is not None
print("OK", first, flush=True)
surface = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surfaces")
surface.GetSegmentation().SetSourceRepresentationName("Closed surface")
try:
    nodes.ensure_segment(surface, SegmentSpec(1, "liver", (0.8, 0.5, 0.4)))
except nodes.SegmentationWriteError as e:
    print("RAISED", e)
"""


def test_ensure_segment_works_before_the_segmentations_logic_has_a_scene(slicer_app):
    """A fresh process, a scene no segmentations logic has seen (``AddEmptySegment`` alone gives ''): the
    segment is made all the same, and where it cannot be (no converter for a closed-surface source) a
    typed error says so instead of an empty id."""
    paths = [os.path.join(ROOT, "ClaraAnnotate"), ROOT]
    r = subprocess.run([sys.executable, "-c", BARE_SCENE.format(paths=paths)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "OK S_" in r.stdout, r.stdout + r.stderr
    assert "RAISED could not add segment 'liver' to surfaces" in r.stdout, r.stdout + r.stderr
    assert "ERR|" not in r.stderr and "WARN|" not in r.stderr, r.stderr


def test_image_from_volume_keeps_voxels_and_geometry(phantom_pair, build, nodes):
    image, _label, volume = _oblique(phantom_pair, build)
    got = nodes.image_from_volume(volume)
    np.testing.assert_array_equal(got.array, image.array)
    np.testing.assert_allclose(got.ijk_to_ras, image.ijk_to_ras, atol=1e-6)
    key = nodes.image_key(volume)
    assert key == nodes.image_key(volume)
    import slicer

    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(volume)
    assert nodes.image_key(volume) != key


def test_slice_axis_from_the_scene_slice_views(phantom_pair, build, nodes):
    """A point placed in a slice view: the view is found among the scene's slice nodes, and the volume
    axis it cuts across follows the volume's orientation (an oblique phantom: not simply k for axial)."""
    import slicer

    _image, _label, _ = _oblique(phantom_pair, build)
    volume = build.volume(np.zeros((30, 40, 50), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    axes, on_plane = {}, {}
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = build.scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
        node.SetOrientation(orientation)
        node.SetSliceOffset({"Red": 30.0, "Yellow": 41.0, "Green": 50.0}[name])
        node.UpdateMatrices()
        axes[name] = nodes.slice_axis_for_view(node, volume)
        # a point on this view's plane
        on_plane[name] = (nodes.matrix(node.GetSliceToRAS()) @ [23.0, 37.0, 0.0, 1.0])[:3]
    assert axes == {"Red": 2, "Yellow": 0, "Green": 1}
    for name, point in on_plane.items():
        assert nodes.slice_axis_for_point(volume, point) == axes[name], name
    assert nodes.slice_axis_for_point(volume, [-7.0, -9.0, -11.0]) is None
    assert slicer.vtkMRMLSliceNode  # slice nodes are plain MRML
