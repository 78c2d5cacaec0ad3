"""ClaraTrainModuleLib's MRML side on Slicer's real libraries: the live curves as plot chart, series and
table nodes, and the training data exported from a scene's volumes and segmentations."""

from __future__ import annotations

import numpy as np
import pytest

from claraseg.errors import TrainingDataError
from claraseg.io import read_image


def test_curves_are_a_plot_chart_with_a_table_per_series(scene):
    from ClaraTrainModuleLib import plots
    from ClaraTrainModuleLib.progress import JobProgress

    progress = JobProgress(state="training", max_iterations=10)
    shown = []
    assert plots.update_curves(scene, {}, progress, show=shown.append) == {}  # no loss yet: no chart
    progress.losses = [(1, 0.9), (2, 0.7)]
    nodes = plots.update_curves(scene, {}, progress, show=shown.append)
    chart = nodes["chart"]
    assert shown == [chart] and chart.IsA("vtkMRMLPlotChartNode") and chart.GetScene() is scene
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(i) for i in range(2)]
    assert [s.GetName() for s in series] == ["loss", "validation Dice"]
    assert series[0].GetTableNode() is nodes["loss"] and series[0].GetYColumnName() == "loss"
    table = nodes["loss"].GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == ["iteration", "loss"]
    assert table.GetNumberOfRows() == 2 and table.GetValue(1, 1).ToDouble() == pytest.approx(0.7)
    assert nodes["validation Dice"].GetTable().GetNumberOfRows() == 0
    progress.losses.append((3, 0.5))
    progress.dices = [(2, 0.61)]
    again = plots.update_curves(scene, nodes, progress, show=shown.append)
    assert again is nodes and len(shown) == 1  # the same nodes, shown once
    assert nodes["loss"].GetTable().GetNumberOfRows() == 3
    dice = nodes["validation Dice"].GetTable()
    assert dice.GetValue(0, 0).ToDouble() == 2 and dice.GetValue(0, 1).ToDouble() == pytest.approx(0.61)
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1


def test_export_writes_each_drawn_segment_as_a_label_value(phantom_pair, build, tmp_path):
    from ClaraAnnotateLib import selftest
    from ClaraTrainModuleLib import export

    image, label = phantom_pair
    volume = build.image_volume(image, "phantom ct")
    names = {str(v): info.name for v, info in label.labels.items()}
    keep = sorted(info.name for info in label.labels.values())[:2]
    seg = selftest.draw_segments(volume, label.array, names, set(keep))
    build.segmentation(volume, "empty")  # no segment: not a training case
    labelmap_ref = build.volume(label.array, label.ijk_to_ras, "labels", labelmap=True)
    build.segmentation(labelmap_ref, "on a label map", ["x"])  # references a label map: not a case
    pairs = export.segmentation_pairs(build.scene)
    assert pairs == [(volume, seg)]
    assert export.case_rows(pairs) == [("phantom ct", "drawn (2 segments)")]
    case = export.export_cases(pairs, str(tmp_path))[0]
    written_image = read_image(case.image)
    written = read_image(case.label, label=True)
    np.testing.assert_array_equal(written_image.array, image.array)
    np.testing.assert_allclose(written.ijk_to_ras, image.ijk_to_ras, atol=1e-5)
    assert sorted(case.labels.values()) == keep
    for value, name in case.labels.items():
        truth_value = next(v for v, info in label.labels.items() if info.name == name)
        np.testing.assert_array_equal(written.array == value, label.array == truth_value)
    assert set(np.unique(written.array)) == {0, *case.labels}


def test_export_refuses_a_segmentation_with_only_empty_segments(build, tmp_path):
    from ClaraTrainModuleLib import export

    volume = build.volume(np.zeros((4, 5, 6), np.int16))
    seg, _a = build.segmentation(volume, "nothing drawn", ["a"])
    with pytest.raises(TrainingDataError, match="every segment is empty"):
        export.export_case(volume, seg, str(tmp_path))


def test_fine_tune_job_from_the_scene_is_followed_plotted_and_published(phantom_pair, build, tmp_path):
    """The panel's logic without Qt: a drawn segmentation is exported, a two-iteration DeepGrow 3D job runs
    in its own process, its events fill the panel and the curves, and the new version is published into
    the user's models folder and offered by the annotation logic."""
    from ClaraAnnotateLib import selftest
    from ClaraAnnotateLib.interaction import InteractionLogic
    from ClaraAnnotateLib.settings import BackendSettings
    from ClaraTrainModuleLib import jobs
    from ClaraTrainModuleLib.trainer import TrainLogic

    image, label = phantom_pair
    volume = build.image_volume(image, "phantom ct")
    names = {str(v): info.name for v, info in label.labels.items()}
    seg = selftest.draw_segments(volume, label.array, names, {info.name for info in label.labels.values()})
    annotate = InteractionLogic(build.scene)
    try:
        selftest.connect(_Check(), annotate, BackendSettings(mode="local", device="cpu",
                                                             models_dir=str(tmp_path / "models")))
        seen = []
        logic = TrainLogic(annotate=annotate, scene=build.scene, workRoot=str(tmp_path / "work"))
        logic.listener = type("W", (), {"onStatus": lambda self, m, level: seen.append((level, m)),
                                        "onJobChanged": lambda self, p: seen.append(("job", p and p.panel()))})()
        assert [m.name for m in logic.trainableModels()] and "deepgrow3d" in {m.name for m in logic.trainableModels()}
        settings = jobs.settings_from_panel(logic.trainableModels(), "deepgrow3d", iterations=2, epochs=0,
                                            learning_rate=1e-4, val_split=0.25, amp=False, smart_cache=False,
                                            device="cpu", on_server=False, extra={"training#val_interval": 1})
        # the server is not connected: a message, nothing started
        assert logic.start(jobs.FineTuneSettings(**{**settings.__dict__, "where": "server"}), [(volume, seg)]) is None
        assert seen[-1][0] == "error" and "connect Clara Annotate to it (Remote)" in seen[-1][1]
        task = logic.start(settings, [(volume, seg)])
        assert task is not None
        progress = logic.wait(timeout=600)
        assert progress.state == "completed", progress.summary()
        assert progress.iteration == 2 and progress.losses and progress.dices
        panel = [p for kind, p in seen if kind == "job" and p][-1]
        assert panel["percent"] == 100 and not panel["running"] and panel["status"].startswith("Done")
        chart = logic.plotNodes["chart"]
        assert chart.GetScene() is build.scene and logic.plotNodes["loss"].GetTable().GetNumberOfRows() == 2
        assert progress.published == "deepgrow3d"
        annotate.waitIdle(60)  # the refresh the job's end asked for: the fine-tuned version is offered
        offered = {m.name: m for m in annotate.connectionInfo.models}["deepgrow3d"]
        assert offered.extra["bundle"] == str(tmp_path / "models" / "deepgrow3d")
        # the published checkpoint is the best validated one of the two iterations (the guard against a
        # structure losing Dice may pick the first)
        assert offered.extra["fine_tune"]["best_iteration"] in (1, 2)
        assert (tmp_path / "models").is_dir() and any((tmp_path / "models").iterdir())
    finally:
        annotate.close()


class _Check:
    def assertEqual(self, a, b, msg=None):
        assert a == b, msg
