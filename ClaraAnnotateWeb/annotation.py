"""The web app's side of the annotation tools: ClaraAnnotateLib's InteractionLogic on a trame-slicer scene.

:class:`ClaraAnnotateLib.interaction.InteractionLogic` is the Qt-free controller the Slicer module and
its Segment Editor effect use: points placed in Slicer's views become voxel indices, engine calls run on
its worker queue and results are written into the segment editor's current segment with the editor's
masking settings. This module adapts it to trame-slicer, whose segment editor keeps the selected
segment and the undo history in Python: :class:`WebInteractionLogic` reads and writes that selection
and records each result as a step of the page's undo stack; :class:`WebAnnotation` is what the page
calls, polls the queue from the event loop and reports to the page (``notify``).
"""

from __future__ import annotations

import collections
import logging
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import slicer
from ClaraAnnotateLib import annotator, geometry, nodes, segments
from ClaraAnnotateLib.interaction import InteractionLogic
from ClaraAnnotateLib.settings import BackendSettings
from trame_slicer.segmentation.segmentation_state_stack import SegmentationStateStack
from undo_stack import UndoCommand
from vtkmodules.util import numpy_support

from claraseg.io import Image, LabelInfo

log = logging.getLogger(__name__)
EXTREME_POINT_COUNT = 6
_TOOL_LISTS = {"foreground": "foregroundPoints", "background": "backgroundPoints", "extreme": "extremePoints"}


def install_scene_globals(slicer_app) -> None:
    """``slicer.util`` helpers read ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``, which only
    Slicer's Qt application sets: point them at this process's one trame-slicer scene."""
    slicer.mrmlScene = slicer_app.scene
    modules = getattr(slicer, "modules", None) or types.SimpleNamespace()
    modules.segmentations = types.SimpleNamespace(logic=lambda: slicer_app.segmentations_logic)
    slicer.modules = modules
    sys.modules["slicer"].mrmlScene = slicer_app.scene


def segment_voxels(segmentation_node, segment_id: str) -> int:
    """How many voxels a segment holds (its binary labelmap as stored: shared layers counted by value)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    rep = segment.GetRepresentation(nodes.LABELMAP) if segment is not None else None
    scalars = rep.GetPointData().GetScalars() if rep is not None else None
    if scalars is None:
        return 0
    return int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars) == segment.GetLabelValue()))


class TimedController(annotator.AnnotationController):
    """The controller, recording each model call's own time (the engine's share of a click) and its points."""

    def __init__(self) -> None:
        super().__init__()
        self.records: collections.deque = collections.deque(maxlen=100)

    def click(self, object_id, model, foreground=(), background=(), slice_axis=None):
        t0 = time.perf_counter()
        delta = super().click(object_id, model, foreground, background, slice_axis)
        points = [list(map(int, p)) for p in list(foreground) + list(background)]
        self.records.append({"what": "click", "engine_seconds": time.perf_counter() - t0,
                             "ijk": points[-1] if points else None, "foreground": bool(len(foreground))})
        return delta

    def extreme_points(self, object_id, model, points):
        t0 = time.perf_counter()
        delta = super().extreme_points(object_id, model, points)
        self.records.append({"what": "extreme_points", "engine_seconds": time.perf_counter() - t0,
                             "points": [list(map(int, p)) for p in points]})
        return delta

    def auto_segment(self, model):
        t0 = time.perf_counter()
        delta = super().auto_segment(model)
        self.records.append({"what": "auto_segment", "engine_seconds": time.perf_counter() - t0})
        return delta


class _ResultUndo(UndoCommand):
    """One Clara result on the page's undo stack: the segmentation as it was before, and (taken at the
    first undo) as it was after."""

    def __init__(self, segmentation) -> None:
        super().__init__()
        self._segmentation = segmentation
        self._stack = SegmentationStateStack(segmentation.segmentation, max_size=2)
        self._stack.save_state()
        self._after_saved = False

    def undo(self) -> None:
        if not self._after_saved:
            self._stack.save_state()
            self._after_saved = True
        self._stack.restore_previous()
        self._segmentation.trigger_modified()

    def redo(self) -> None:
        self._stack.restore_next()
        self._segmentation.trigger_modified()


class WebInteractionLogic(InteractionLogic):
    """InteractionLogic on trame-slicer's segment editor: its selected segment and its undo stack."""

    def __init__(self, slicer_app) -> None:
        self.editor = slicer_app.segmentation_editor
        super().__init__(scene=slicer_app.scene, editorNode=self.editor.editor_node)
        self.controller = TimedController()

    def target(self, needSegment: bool = True, editorNode=None):
        node = editorNode or self.segmentEditorNode()
        selected = self.editor.get_active_segment_id()
        if node.GetSelectedSegmentID() != selected:
            node.SetSelectedSegmentID(selected or None)
        volume, segmentation, segment_id = super().target(needSegment, editorNode)
        if segment_id and segment_id != selected:  # made for the first click: the page selects it too
            self.editor.set_active_segment_id(segment_id)
        return volume, segmentation, segment_id

    def saveStateForUndo(self, editorNode=None) -> None:
        modifier = self.editor.active_segment_modifier
        if modifier is not None and modifier.segmentation.undo_stack is not None:
            modifier.segmentation.undo_stack.push(_ResultUndo(modifier.segmentation))


class WebAnnotation:
    """What the page calls. ``notify(event, **data)`` reports: ``status`` (message, level), ``busy`` (flag,
    label), ``points`` (counts per tool), ``voxels`` (the current segment's size), ``result`` (what,
    seconds from the point placed to the segment written, the engine's own seconds, points)."""

    def __init__(self, slicer_app, notify: Callable[..., None]) -> None:
        self.app = slicer_app
        self.editor = slicer_app.segmentation_editor
        self.notify = notify
        self.logic = WebInteractionLogic(slicer_app)
        self.logic.addListener(self)
        self.tool = ""
        self._observed: list[tuple[Any, int]] = []
        self._placed_at: float | None = None

    # ----- backend ---------------------------------------------------------------------------------
    def connect(self, settings: BackendSettings) -> annotator.ConnectionInfo:
        """Connect (blocking: called once at start-up, before the page is served)."""
        info = self.logic.controller.connect(settings)
        self.logic.connectionInfo = info
        pn = self.logic.getParameterNode()
        for field, kinds in annotator.TOOL_FIELDS:
            m = annotator.default_model(info.models, kinds)
            setattr(pn, field, m.name if m else "")
        return info

    def model_names(self, kinds) -> list[str]:
        info = self.logic.connectionInfo
        return [m.name for m in (info.models if info else []) if m.kind in kinds]

    def set_models(self, click: str, extreme: str, auto: str) -> None:
        pn = self.logic.getParameterNode()
        pn.clickModel, pn.extremeModel, pn.autoModel = click, extreme, auto

    def close(self) -> None:
        self.logic.close()

    @property
    def busy(self) -> bool:
        return self.logic.queue.busy

    def poll(self) -> None:
        """Deliver finished work (call from the event loop: results are written to MRML here)."""
        self.logic.poll()

    # ----- InteractionLogic's listener ---------------------------------------------------------------
    def onStatus(self, message: str, level: str) -> None:  # noqa: N802 - the listener protocol's names
        self.notify("status", message=message, level=level)
        if level == "ok":
            self._after_result()

    def onBusyChanged(self, busy: bool, label: str) -> None:  # noqa: N802
        self.notify("busy", flag=bool(busy), label=label)

    def onPointsChanged(self) -> None:  # noqa: N802
        counts = self.point_counts()
        self.notify("points", counts=counts)
        if counts.get("extreme", 0) >= EXTREME_POINT_COUNT and not self.logic.queue.busy:
            self.run_extreme_points()

    def _after_result(self) -> None:
        modifier = self.editor.active_segment_modifier
        if modifier is not None:
            modifier.segmentation.trigger_modified()
        segmentation = self.editor.active_segmentation_node
        if segmentation is not None:
            self.notify("voxels", count=segment_voxels(segmentation, self.editor.get_active_segment_id()))
        while self.logic.controller.records:
            record = self.logic.controller.records.popleft()
            started = self._placed_at
            total = time.perf_counter() - started if started is not None else record["engine_seconds"]
            self.notify("result", seconds=total, **record)
        self._placed_at = None

    # ----- scene and tools ---------------------------------------------------------------------------
    def volume(self):
        return self.editor.active_volume_node

    def on_scene_reset(self) -> None:
        """A new volume was loaded (the scene was cleared): new point lists, a new session on next use."""
        for node, tag in self._observed:
            node.RemoveObserver(tag)
        self._observed.clear()
        self.logic.removeObservers()
        pn = self.logic.getParameterNode()
        pn.foregroundPoints = pn.backgroundPoints = pn.extremePoints = None
        self.logic.controller.close_session()
        self.set_tool("")

    def _point_lists(self):
        pn = self.logic.getParameterNode()
        if any(getattr(pn, a) is None or getattr(pn, a).GetScene() is None for a in _TOOL_LISTS.values()):
            for a in _TOOL_LISTS.values():
                if getattr(pn, a) is not None and getattr(pn, a).GetScene() is None:
                    setattr(pn, a, None)
            self.logic.ensurePointLists(pn)
            defined = slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
            for kind, attr in _TOOL_LISTS.items():
                node = getattr(pn, attr)
                tag = node.AddObserver(defined, lambda caller, event, k=kind: self._on_point(k), 1.0)
                self._observed.append((node, tag))
        return {k: getattr(pn, a) for k, a in _TOOL_LISTS.items()}

    def _on_point(self, kind: str) -> None:
        """Runs before InteractionLogic's observer (higher priority): the click's start time."""
        if kind != "extreme":
            self._placed_at = time.perf_counter()
        self.notify("points", counts=self.point_counts())

    def point_counts(self) -> dict[str, int]:
        pn = self.logic.getParameterNode()
        out = {}
        for kind, attr in _TOOL_LISTS.items():
            node = getattr(pn, attr)
            out[kind] = len(nodes.markups_world_points(node)) if node is not None and node.GetScene() else 0
        return out

    def set_tool(self, tool: str) -> None:
        """"foreground", "background", "extreme" (place points in the views) or "" (no placing)."""
        self.tool = tool
        if tool in _TOOL_LISTS:
            self.editor.deactivate_effect()
            self.app.markups_logic.place_node(self._point_lists()[tool], persistent=True)
        elif self.app.markups_logic.interaction_node is not None:
            self.app.markups_logic.disable_place_mode()

    def run_extreme_points(self):
        self._placed_at = time.perf_counter()
        task = self.logic.runExtremePoints()
        if task is not None:
            pn = self.logic.getParameterNode()
            self.logic._ignorePointEvents = True  # emptying the list is not a user's edit
            try:
                pn.extremePoints.RemoveAllControlPoints()
            finally:
                self.logic._ignorePointEvents = False
            self.notify("points", counts=self.point_counts())
        return task

    def auto_segment(self):
        self._placed_at = time.perf_counter()
        return self.logic.runAutoSegment()

    def undo(self):
        """Undo the model's last step on the current segment."""
        return self.logic.undoObject()

    def clear(self):
        """Clear the current segment and its points."""
        task = self.logic.clearObject()
        self.notify("points", counts=self.point_counts())
        return task

    # ----- export ------------------------------------------------------------------------------------
    def labelmap(self) -> tuple[Image, dict[int, str]]:
        """The segmentation as one label map on the volume's grid: segment n (in list order) -> value n."""
        volume, segmentation, _ = self.logic.target(needSegment=False)
        seg = segmentation.GetSegmentation()
        ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
        if not ids:
            raise annotator.InvalidPointsError("the segmentation is empty: segment something first")
        out = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=np.uint16 if len(ids) > 255 else np.uint8)
        names, infos = {}, {}
        for value, segment_id in enumerate(ids, start=1):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
            out[mask != 0] = value
            segment = seg.GetSegment(segment_id)
            names[value] = segments.label_key(segment.GetName())
            infos[value] = LabelInfo(names[value], tuple(segment.GetColor()))
        image = geometry.image_from_array(out, nodes.ijk_to_ras(volume))
        image.labels = infos
        return image, names
