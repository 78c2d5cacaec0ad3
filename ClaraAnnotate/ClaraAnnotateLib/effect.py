"""The Segment Editor effect's logic without Qt: which events it takes, what a click does, what its
options show. ``SegmentEditorClaraLib/SegmentEditorEffect.py`` only reads its widgets and calls these."""

from __future__ import annotations

from typing import Any

#: The effect's click modes, in the order of its radio buttons.
MODES = ("foreground", "background", "extreme")
NOT_CONNECTED = "Not connected: set up the backend in Clara Annotate"


def mode_from_buttons(background: bool, extreme: bool) -> str:
    """The click mode the radio buttons select (foreground unless another is checked)."""
    if background:
        return "background"
    if extreme:
        return "extreme"
    return "foreground"


def takes_event(is_slice_view: bool, is_left_press: bool, shift: bool = False, ctrl: bool = False,
                alt: bool = False) -> bool:
    """A plain left press in a slice view is a click; everything else (3D views, modifier keys for
    panning and zooming, other buttons) is left to Slicer."""
    return bool(is_slice_view and is_left_press and not (shift or ctrl or alt))


def xy_to_ras(xy, slice_node) -> list[float] | None:
    """World RAS of a slice view's pixel, through the Qt-free segment editor logic (Slicer >= 5.10);
    None where it does not exist (the effect then asks its Qt helper)."""
    import slicer

    cls = getattr(slicer, "vtkSlicerSegmentEditorLogic", None)
    if cls is None:
        return None
    ras = [0.0, 0.0, 0.0]
    cls.XyToRas([float(xy[0]), float(xy[1])], ras, slice_node)
    return ras


def place_click(logic: Any, mode: str, ras, slice_node=None, save_undo=None, editor_node=None):
    """A click of the effect: the point is shown in its point list; a foreground/background point runs
    the model at once (``logic.clickAt``; returns its task), an extreme point waits for the others."""
    if mode not in MODES:
        raise ValueError(f"unknown click mode '{mode}' (one of {', '.join(MODES)})")
    pn = logic.getParameterNode()
    logic.ensurePointLists(pn)
    points = {"foreground": pn.foregroundPoints, "background": pn.backgroundPoints, "extreme": pn.extremePoints}[mode]
    logic.addPoint(points, ras)
    if mode == "extreme":
        logic._notify("onPointsChanged")
        return None
    return logic.clickAt(ras, mode == "foreground", sliceNode=slice_node, saveUndo=save_undo, editorNode=editor_node)


def defined_points(point_list) -> int:
    return point_list.GetNumberOfDefinedControlPoints() if point_list is not None else 0


def extreme_points_text(n: int) -> str:
    return f"{n} of at least 6 extreme points"


def can_run_extreme_points(n: int, connected: bool) -> bool:
    return n >= 6 and connected


def connection_text(info) -> str:
    return info.summary if info is not None else NOT_CONNECTED


def models_text(pn) -> str:
    """The models each tool of the effect uses, e.g. ``clicks: deepgrow3d | extreme points: dextr3d | auto: -``."""
    return " | ".join(f"{name}: {getattr(pn, field) or '-'}" for name, field in
                      (("clicks", "clickModel"), ("extreme points", "extremeModel"), ("auto", "autoModel")))
