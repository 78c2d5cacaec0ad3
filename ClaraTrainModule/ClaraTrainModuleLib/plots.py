"""The fine-tune panel's live curves as Slicer plot nodes: a chart with the loss and the validation Dice
against iteration, each series backed by a table node. Needs Slicer's MRML libraries, not Qt."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import slicer

#: Series of the chart: (name, colour, attribute of the JobProgress holding its (iteration, value) points).
SERIES = (("loss", (0.85, 0.3, 0.2), "losses"), ("validation Dice", (0.2, 0.5, 0.9), "dices"))


def create_chart(scene) -> dict[str, Any]:
    """The chart, its series and their tables (empty), added to ``scene``; keys: ``chart`` and each series."""
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "Fine-tune curves")
    chart.SetXAxisTitle("iteration")
    chart.SetYAxisTitle("loss / Dice")
    created: dict[str, Any] = {"chart": chart}
    for key, color, _attr in SERIES:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"Fine-tune {key}")
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", key)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("iteration")
        series.SetYColumnName(key)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        created[key] = table
    return created


def fill_table(table_node, points, name: str) -> None:
    """Set a table node to two float columns, ``iteration`` and ``name``, from (iteration, value) pairs."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    slicer.util.updateTableFromArray(table_node, [arr[:, 0].copy(), arr[:, 1].copy()], ["iteration", name])


def update_curves(scene, plot_nodes: dict[str, Any], progress, show: Optional[Callable[[Any], None]] = None) -> dict[str, Any]:
    """Bring the curves up to date with a job's progress; creates the chart on the first losses (and
    calls ``show(chart)``, e.g. to put it in the layout). Returns the (possibly new) node dict."""
    if not progress.losses:
        return plot_nodes
    if not plot_nodes:
        plot_nodes = create_chart(scene)
        if show is not None:
            show(plot_nodes["chart"])
    for key, _color, attr in SERIES:
        points = getattr(progress, attr)
        if points:
            fill_table(plot_nodes[key], points, key)
    return plot_nodes
