"""Sample data for the modules' self-tests (shared by ClaraAnnotate and ClaraTrainModule)."""

from __future__ import annotations

import json
import os
from typing import Optional

SAMPLE_MISSING = "sample CT not found: set CLARASEG_DATA to the folder holding ct_abdomen_3mm/"


def sample_data_dir(module_file: str) -> Optional[str]:
    """``$CLARASEG_DATA``, or ``../shared/data`` beside the checkout holding ``module_file``; None if absent."""
    here = os.path.dirname(os.path.abspath(module_file))
    for d in (os.environ.get("CLARASEG_DATA"), os.path.join(here, "..", "..", "shared", "data")):
        if d and os.path.exists(os.path.join(d, "ct_abdomen_3mm", "image.nii.gz")):
            return d
    return None


def load_sample_ct(test_case, module_file: str, volumes_logic, data_dir: Optional[str] = None):
    """Load the sample CT and its label map into the scene with Slicer's Volumes logic (the reader
    *File > Add Data* uses; Qt-free), skipping ``test_case`` when the data is absent.

    Returns ``(volume node, label array [k, j, i], {value: name entry})``. ``data_dir``: the folder
    holding ``ct_abdomen_3mm/`` (default: :func:`sample_data_dir`).
    """
    import numpy as np
    import slicer

    d = data_dir or sample_data_dir(module_file)
    if d is None:
        test_case.skipTest(SAMPLE_MISSING)
    folder = os.path.join(d, "ct_abdomen_3mm")
    volume = volumes_logic.AddArchetypeVolume(os.path.join(folder, "image.nii.gz"), "ct_abdomen_3mm", 0)
    label = volumes_logic.AddArchetypeVolume(os.path.join(folder, "label.nii.gz"), "ct_abdomen_3mm labels", 1)
    if volume is None or label is None:
        test_case.fail(f"the Volumes logic could not read {folder}")
    with open(os.path.join(folder, "labels.json")) as f:
        names = json.load(f)
    labels = np.array(slicer.util.arrayFromVolume(label), copy=True)
    return volume, labels, names


# ----- what the self-tests do and expect (shared with the pytest that checks them on the engine) -----------
#: Clicks of the click self-test: the first at the structure's deepest point, then corrective clicks
#: placed by the click protocol of ANCHORS.md on the current error.
SELFTEST_CLICKS = 5
#: Smallest Dice each self-test accepts with the default models (tests/slicer/test_selftest_expectations.py
#: checks them on the engine, so a retrained model that falls below fails CI, not only in Slicer).
CLICK_MIN_DICE = 0.6
EXTREME_MIN_DICE = 0.7
AUTO_MIN_DICE = 0.5
#: The structure the interactive self-tests segment (held out of the interactive models' training).
SELFTEST_STRUCTURE = "spleen"


def label_value(names: dict, wanted: str) -> Optional[int]:
    """The value of the structure called ``wanted`` in a labels.json mapping (entries: name or {name})."""
    for k, v in names.items():
        if (v["name"] if isinstance(v, dict) else v) == wanted:
            return int(k)
    return None


def protocol_click(current, truth, seed: int = 42):
    """The next click ``([i, j, k], foreground)`` of the click protocol for a ``[k, j, i]`` mask pair, or
    None when they agree (an empty ``current`` gives the structure's deepest point)."""
    import numpy as np

    from claraseg.evaluate.protocol import next_click

    found = next_click(np.asarray(current, bool), np.asarray(truth, bool), np.random.default_rng(seed))
    if found is None:
        return None
    (k, j, i), foreground = found
    return [int(i), int(j), int(k)], foreground


def extreme_points_ijk(truth) -> list:
    """The six extreme points ``[i, j, k]`` of a ``[k, j, i]`` mask (ties: nearest the centroid)."""
    import numpy as np

    from claraseg.evaluate.protocol import extreme_points

    return extreme_points(np.asarray(truth, bool))


# ----- the self-tests' bodies (run by the modules' ScriptedLoadableModuleTest in Slicer and by pytest on
# slicer-core): ``check`` is a unittest.TestCase with ``delayDisplay(message)`` ---------------------------
def connect(check, logic, settings):
    """Connect ``logic`` (an InteractionLogic) to the backend ``settings`` describe."""
    task = logic.wait(logic.connect(settings))
    check.assertEqual(task.state, "done", f"connect failed: {task.error}")
    return logic


def backend_settings(environ=None):
    """Local, or the remote server named by ``CLARASEG_TEST_SERVER`` (token ``CLARASEG_TEST_TOKEN``)."""
    from ClaraAnnotateLib.settings import BackendSettings

    env = os.environ if environ is None else environ
    url = env.get("CLARASEG_TEST_SERVER", "")
    return BackendSettings(mode="remote" if url else "local", url=url or "http://127.0.0.1:8000",
                           token=env.get("CLARASEG_TEST_TOKEN", ""))


def segmentation_for(editor_node, volume, name: str = SELFTEST_STRUCTURE):
    """A new segmentation of ``volume`` with one empty segment, selected in ``editor_node``."""
    from ClaraAnnotateLib import nodes, segments

    scene = volume.GetScene()
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    editor_node.SetAndObserveSourceVolumeNode(volume)
    editor_node.SetAndObserveSegmentationNode(seg)
    segment_id = nodes.ensure_segment(seg, segments.SegmentSpec(1, name, segments.color_for(name)))
    editor_node.SetSelectedSegmentID(segment_id)
    return seg, segment_id


def draw_segments(volume, labels, names, keep, name: str = "drawn"):
    """A segmentation of ``volume`` holding the structures ``keep`` of a label array, one segment each,
    as if drawn by hand (the fine-tune self-test learns from it)."""
    import numpy as np

    from ClaraAnnotateLib import nodes, segments
    from claraseg.io import MaskDelta

    seg = volume.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for spec in segments.segments_for_labels({int(v): (e["name"] if isinstance(e, dict) else e)
                                              for v, e in names.items()}):
        if segments.label_key(spec.name) in keep:
            segment_id = nodes.ensure_segment(seg, spec)
            mask = MaskDelta.from_full((labels == spec.label_value).astype(np.uint8))
            nodes.write_delta(mask, seg, segment_id, volume)
    return seg


def _truth(check, labels, names, wanted: str):
    value = label_value(names, wanted)
    if value is None:
        check.fail(f"label '{wanted}' not in labels.json")
    return labels == value


def check_click(check, logic, volume, labels, names) -> float:
    """Protocol clicks in the spleen through ``logic.clickAt`` (world points); returns the last Dice."""
    from ClaraAnnotateLib import annotator, nodes
    from claraseg.evaluate.protocol import dice

    truth = _truth(check, labels, names, SELFTEST_STRUCTURE)
    seg, segment_id = segmentation_for(logic.segmentEditorNode(), volume)
    logic.getParameterNode().clickModel = annotator.default_model(logic.connectionInfo.models, ("deepgrow3d",)).name
    result = truth & False  # nothing segmented yet: the first protocol click is the deepest point
    d = 0.0
    for n in range(SELFTEST_CLICKS):
        click = protocol_click(result, truth)
        if click is None:
            break
        ijk, foreground = click
        check.delayDisplay(f"Click {n + 1} ({'foreground' if foreground else 'background'}) at [i, j, k] = {ijk}")
        task = logic.wait(logic.clickAt(nodes.ijk_to_world(volume, ijk), foreground))
        check.assertEqual(task.state, "done", f"click failed: {task.error}")
        result = nodes.segment_array(seg, segment_id, volume) > 0
        d = dice(result, truth)
        check.delayDisplay(f"Dice after {n + 1} click(s): {d:.3f}")
    check.assertGreater(d, CLICK_MIN_DICE)
    return d


def check_extreme_points(check, logic, volume, labels, names) -> float:
    from ClaraAnnotateLib import nodes
    from claraseg.evaluate.protocol import dice

    truth = _truth(check, labels, names, SELFTEST_STRUCTURE)
    seg, segment_id = segmentation_for(logic.segmentEditorNode(), volume)
    points = [nodes.ijk_to_world(volume, ijk) for ijk in extreme_points_ijk(truth)]
    task = logic.wait(logic.runExtremePoints(points))
    check.assertEqual(task.state, "done", f"extreme points failed: {task.error}")
    d = dice(nodes.segment_array(seg, segment_id, volume), truth)
    check.delayDisplay(f"Dice from six extreme points: {d:.3f}")
    check.assertGreater(d, EXTREME_MIN_DICE)
    return d


def check_auto_segment(check, logic, volume, labels, names) -> dict:
    """Auto-segmentation: one named segment per model label; Dice of those the sample CT has."""
    from ClaraAnnotateLib import annotator, nodes, segments
    from claraseg.evaluate.protocol import dice

    seg, _segment_id = segmentation_for(logic.segmentEditorNode(), volume)
    model = annotator.default_model(logic.connectionInfo.models, annotator.AUTO_KINDS)
    check.assertIsNotNone(model, "the backend offers no segmentation model")
    logic.getParameterNode().autoModel = model.name
    task = logic.wait(logic.runAutoSegment(), timeout=1200)
    check.assertEqual(task.state, "done", f"auto-segment failed: {task.error}")
    dices = {}
    for value, name in model.labels.items():
        segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName(segments.display_name(name))
        check.assertTrue(segment_id, f"no segment named after label {value} '{name}'")
        truth = label_value(names, name)
        if truth is not None:
            dices[name] = dice(nodes.segment_array(seg, segment_id, volume), labels == truth)
            check.delayDisplay(f"Auto-segment Dice for {name}: {dices[name]:.3f}")
            check.assertGreater(dices[name], AUTO_MIN_DICE)
    check.assertTrue(dices, "the default segmentation model shares no label with the sample CT")
    return dices


def check_parent_transform(check, volume) -> None:
    """A click under a parent transform lands on the voxel under the mouse, not beside it."""
    import numpy as np
    import slicer

    from ClaraAnnotateLib import nodes

    transform = volume.GetScene().AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    m[:3, 3] = [20.0, -7.0, 12.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    ijk = np.array([40, 30, 50])
    world = (m @ np.append((nodes.ijk_to_ras(volume) @ np.append(ijk, 1.0))[:3], 1.0))[:3]
    check.assertTrue(np.array_equal(nodes.world_points_to_ijk(volume, [world])[0], ijk))
