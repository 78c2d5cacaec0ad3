"""The annotation tools (ClaraAnnotateLib.interaction, the Segment Editor effect's logic and the modules'
self-test bodies) on Slicer's real MRML libraries and the real engine with the default models: the sample
CT loaded by Slicer's Volumes logic, a segment editor node, point lists, slice nodes, undo through
``vtkSlicerSegmentEditorLogic``. Only Qt widgets are absent."""

from __future__ import annotations

import unittest

import numpy as np
import pytest


class Check(unittest.TestCase):
    """What the modules' ScriptedLoadableModuleTest gives the self-test bodies: assertions and delayDisplay."""

    __test__ = False  # not a test of its own

    def runTest(self):  # an instance only lends its assertions
        pass

    def delayDisplay(self, message):
        print(message)


@pytest.fixture(scope="module")
def ct(slicer_app, data_dir):
    """The sample CT and its labels, read by Slicer's Volumes logic into the session's scene."""
    from ClaraAnnotateLib import selftest

    volume, labels, names = selftest.load_sample_ct(Check(), selftest.__file__, slicer_app.volumes_logic, str(data_dir))
    yield volume, labels, names
    slicer_app.scene.Clear(0)


@pytest.fixture(scope="module")
def logic(slicer_app, ct, tmp_path_factory):
    """The Qt-free tools on the session's scene, connected to the in-process engine with the packaged
    default models only (an empty user models folder: nothing fine-tuned elsewhere is picked up)."""
    from ClaraAnnotateLib import selftest
    from ClaraAnnotateLib.interaction import InteractionLogic
    from ClaraAnnotateLib.settings import BackendSettings

    lg = InteractionLogic(slicer_app.scene)
    selftest.connect(Check(), lg, BackendSettings(mode="local", device="cpu",
                                                  models_dir=str(tmp_path_factory.mktemp("user-models"))))
    yield lg
    lg.close()


def test_sample_ct_read_by_slicer_matches_claraseg(ct, data_dir):
    from ClaraAnnotateLib import nodes

    from claraseg.io import read_image

    volume, labels, _names = ct
    image = read_image(data_dir / "ct_abdomen_3mm" / "image.nii.gz")
    np.testing.assert_array_equal(nodes.image_from_volume(volume).array, image.array)
    np.testing.assert_allclose(nodes.ijk_to_ras(volume), image.ijk_to_ras, atol=1e-4)
    assert labels.shape == image.array.shape and labels.max() > 0


def test_selftest_click_spleen(logic, ct):
    from ClaraAnnotateLib import selftest

    assert selftest.check_click(Check(), logic, *ct) > selftest.CLICK_MIN_DICE


def test_selftest_extreme_points_spleen(logic, ct):
    from ClaraAnnotateLib import selftest

    assert selftest.check_extreme_points(Check(), logic, *ct) > selftest.EXTREME_MIN_DICE


@pytest.mark.slow
def test_selftest_auto_segment(logic, ct):
    from ClaraAnnotateLib import segments, selftest

    dices = selftest.check_auto_segment(Check(), logic, *ct)
    assert dices and min(dices.values()) > selftest.AUTO_MIN_DICE
    seg = logic.segmentEditorNode().GetSegmentationNode().GetSegmentation()
    colours = [tuple(np.round(seg.GetNthSegment(i).GetColor(), 3)) for i in range(seg.GetNumberOfSegments())]
    assert len(set(colours)) == len(colours), "two segments share a colour"
    assert seg.GetSegmentIdBySegmentName(segments.display_name("kidney_left"))


def test_a_click_under_a_non_linear_transform_logs_nothing(logic, ct, build_in_app, capfd):
    """The volume and its segmentation under a warp: the click lands on the voxel under the point and
    neither the click nor the write logs an ERR or WARN line."""
    from ClaraAnnotateLib import nodes, selftest

    volume, labels, names = ct
    warp = build_in_app.warp_transform(5.0)
    seg, segment_id = selftest.segmentation_for(logic.segmentEditorNode(), volume, "warped")
    truth = labels == selftest.label_value(names, selftest.SELFTEST_STRUCTURE)
    ijk = selftest.protocol_click(np.zeros_like(truth), truth)[0]
    logic.getParameterNode().clickModel = "deepgrow3d"
    for node in (volume, seg):
        node.SetAndObserveTransformNodeID(warp.GetID())
    try:
        world = nodes.ijk_to_world(volume, ijk)
        assert nodes.world_points_to_ijk(volume, [world])[0].tolist() == ijk
        capfd.readouterr()
        assert logic.wait(logic.clickAt(world, True), 300).state == "done"
        err = capfd.readouterr().err
    finally:
        for node in (volume, seg):
            node.SetAndObserveTransformNodeID(None)
    assert nodes.segment_array(seg, segment_id, volume)[ijk[2], ijk[1], ijk[0]] == 1
    assert "ERR|" not in err and "WARN|" not in err, err


def test_auto_segment_without_nibabel_says_what_to_install(logic, ct, monkeypatch):
    from ClaraAnnotateLib import selftest

    volume = ct[0]
    seg, _segment_id = selftest.segmentation_for(logic.segmentEditorNode(), volume, "no nibabel")
    messages = []
    logic.addListener(type("L", (), {"onStatus": lambda self, m, level: messages.append((level, m))})())
    monkeypatch.setitem(__import__("sys").modules, "nibabel", None)  # as if the Local install had not brought it
    logic.getParameterNode().autoModel = "segmentation"
    try:
        task = logic.wait(logic.runAutoSegment(), 120)
    finally:
        logic.listeners.clear()
        logic.getParameterNode().autoModel = ""
    assert task.state == "failed"
    level, text = messages[-1]
    assert level == "error" and "needs nibabel>=5" in text and "Install PyTorch and MONAI" in text, text
    assert seg.GetSegmentation().GetNumberOfSegments() == 1  # nothing written


def test_selftest_parent_transform(ct):
    from ClaraAnnotateLib import selftest

    volume = ct[0]
    try:
        selftest.check_parent_transform(Check(), volume)
    finally:
        volume.SetAndObserveTransformNodeID(None)


def test_placed_point_equals_a_direct_engine_click(logic, ct, slicer_app):
    """A foreground point placed in the point list (PointPositionDefinedEvent, as the markups place widget
    fires it) runs a click whose segment equals a direct engine session's result voxel for voxel."""
    from ClaraAnnotateLib import nodes, selftest

    from claraseg.engine import LocalBackend

    volume, labels, names = ct
    seg, segment_id = selftest.segmentation_for(logic.segmentEditorNode(), volume, "placed")
    pn = logic.getParameterNode()
    pn.clickModel = "deepgrow3d"
    logic.ensurePointLists(pn)
    truth = labels == selftest.label_value(names, "liver")
    ijk = selftest.protocol_click(np.zeros_like(truth), truth)[0]
    world = nodes.ijk_to_world(volume, ijk)
    pn.foregroundPoints.AddControlPoint(*world)  # a defined point: fires PointPositionDefinedEvent
    logic.waitIdle(300)
    got = nodes.segment_array(seg, segment_id, volume)
    backend = logic.controller.backend  # the same in-process engine, its own session
    assert isinstance(backend, LocalBackend)
    session = backend.open_session(nodes.image_from_volume(volume))
    try:
        expected = session.click("deepgrow3d", foreground=[ijk], object_id="direct").to_full()
    finally:
        session.close()
    assert got.sum() > 100
    np.testing.assert_array_equal(got, expected != 0)
    pn.foregroundPoints.RemoveAllControlPoints()


@pytest.mark.parametrize("orientation,axis", [("Axial", 2), ("Sagittal", 0), ("Coronal", 1)])
def test_deepgrow2d_works_on_the_slice_of_the_view_clicked(logic, ct, slicer_app, orientation, axis):
    from ClaraAnnotateLib import nodes, selftest

    volume, labels, names = ct
    seg, segment_id = selftest.segmentation_for(logic.segmentEditorNode(), volume, f"2d {orientation}")
    logic.getParameterNode().clickModel = "deepgrow2d"
    truth = labels == selftest.label_value(names, "liver")
    ijk = selftest.protocol_click(np.zeros_like(truth), truth)[0]
    world = nodes.ijk_to_world(volume, ijk)
    view = slicer_app.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    view.SetOrientation(orientation)
    view.JumpSliceByCentering(*world)
    view.UpdateMatrices()
    try:
        task = logic.wait(logic.clickAt(world, True, sliceNode=view), 300)
        assert task.state == "done", task.error
    finally:
        slicer_app.scene.RemoveNode(view)
        logic.getParameterNode().clickModel = ""
    got = nodes.segment_array(seg, segment_id, volume)  # [k, j, i]
    touched = np.nonzero(got.any(axis=tuple(a for a in range(3) if a != 2 - axis)))[0]
    assert got.sum() > 20
    assert touched.tolist() == [ijk[axis]], f"{orientation}: slices {touched.tolist()} changed, not {ijk[axis]}"


def test_each_result_is_one_segment_editor_undo_step(logic, ct):
    from ClaraAnnotateLib import nodes, selftest

    volume, labels, names = ct
    seg, segment_id = selftest.segmentation_for(logic.segmentEditorNode(), volume, "undo")
    truth = labels == selftest.label_value(names, selftest.SELFTEST_STRUCTURE)
    ijk = selftest.protocol_click(np.zeros_like(truth), truth)[0]
    logic.getParameterNode().clickModel = "deepgrow3d"
    assert logic.wait(logic.clickAt(nodes.ijk_to_world(volume, ijk), True), 300).state == "done"
    first = nodes.segment_array(seg, segment_id, volume)
    assert first.sum() > 0
    assert logic.undoEdit()
    assert nodes.segment_array(seg, segment_id, volume).sum() == 0
    assert logic.redoEdit()
    np.testing.assert_array_equal(nodes.segment_array(seg, segment_id, volume), first)


def test_results_obey_the_editors_intensity_range(logic, ct):
    """A click's result is masked like a paint stroke: nothing outside the editable intensity range."""
    from ClaraAnnotateLib import nodes, selftest

    volume, labels, names = ct
    editor = logic.segmentEditorNode()
    seg, segment_id = selftest.segmentation_for(editor, volume, "masked")
    truth = labels == selftest.label_value(names, selftest.SELFTEST_STRUCTURE)
    ijk = selftest.protocol_click(np.zeros_like(truth), truth)[0]
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(60, 200)
    try:
        assert logic.wait(logic.clickAt(nodes.ijk_to_world(volume, ijk), True), 300).state == "done"
    finally:
        editor.SetSourceVolumeIntensityMask(False)
    got = nodes.segment_array(seg, segment_id, volume) != 0
    ct_values = nodes.image_from_volume(volume).array
    assert got.sum() > 0
    assert ct_values[got].min() >= 60 and ct_values[got].max() <= 200


def test_effect_logic_clicks_and_extreme_points(logic, ct, slicer_app):
    """The Segment Editor effect's non-Qt part: which events it takes, XY -> RAS in a slice view, a
    foreground click runs the model for the effect's own editor node, extreme points wait for six."""
    from ClaraAnnotateLib import effect, nodes, selftest

    volume, labels, names = ct
    assert effect.takes_event(True, True) and not effect.takes_event(False, True)
    assert not effect.takes_event(True, True, shift=True) and not effect.takes_event(True, False)
    assert effect.mode_from_buttons(False, False) == "foreground"
    assert effect.mode_from_buttons(True, False) == "background" and effect.mode_from_buttons(False, True) == "extreme"
    # the effect's own editor (not the module's singleton node)
    own = slicer_app.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    seg, segment_id = selftest.segmentation_for(own, volume, "effect")
    truth = labels == selftest.label_value(names, selftest.SELFTEST_STRUCTURE)
    ijk = selftest.protocol_click(np.zeros_like(truth), truth)[0]
    world = nodes.ijk_to_world(volume, ijk)
    view = slicer_app.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    view.SetOrientation("Axial")
    view.SetDimensions(400, 300, 1)
    view.SetFieldOfView(400.0, 300.0, 1.0)
    view.JumpSliceByCentering(*world)
    view.UpdateMatrices()
    ras_to_xy = np.linalg.inv(nodes.matrix(view.GetXYToRAS()))
    xy = (ras_to_xy @ [*world, 1.0])[:2]
    ras = effect.xy_to_ras(xy, view)
    np.testing.assert_allclose(ras, world, atol=1e-3)
    undo_steps = []
    logic.getParameterNode().clickModel = "deepgrow3d"
    task = effect.place_click(logic, "foreground", ras, view, lambda: undo_steps.append(1), own)
    assert logic.wait(task, 300).state == "done"
    assert undo_steps == [1]  # the effect's undo (its editor widget's history), not the logic's
    assert nodes.segment_array(seg, segment_id, volume).sum() > 0
    pn = logic.getParameterNode()
    assert effect.defined_points(pn.foregroundPoints) >= 1
    seen = []
    logic.addListener(type("L", (), {"onPointsChanged": lambda self: seen.append(1)})())
    for p in selftest.extreme_points_ijk(truth)[:5]:
        assert effect.place_click(logic, "extreme", nodes.ijk_to_world(volume, p), view, None, own) is None
    n = effect.defined_points(pn.extremePoints)
    assert n == 5 and seen and effect.extreme_points_text(n) == "5 of at least 6 extreme points"
    assert not effect.can_run_extreme_points(n, True) and effect.can_run_extreme_points(6, True)
    assert effect.models_text(pn).startswith("clicks: deepgrow3d | extreme points: ")
    assert effect.connection_text(None) == effect.NOT_CONNECTED
    assert effect.connection_text(logic.connectionInfo).startswith("Connected (in Slicer)")
    with pytest.raises(ValueError, match="unknown click mode"):
        effect.place_click(logic, "paint", ras)
    logic.clearPoints()
    logic.listeners.clear()
    slicer_app.scene.RemoveNode(view)
