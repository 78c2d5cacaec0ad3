"""The web app's annotation logic: ClaraAnnotateLib's controller driven from a trame-slicer scene.

Points placed in Slicer's views (markups place mode, as in the desktop module) become voxel indices
through :mod:`ClaraAnnotateLib.nodes`; the engine calls (:class:`ClaraAnnotateLib.annotator.AnnotationController`)
run on a :class:`ClaraAnnotateLib.worker.TaskQueue` thread and their results are written into the
segment editor's current segment on the main thread (the asyncio loop's), as one step of the editor's
undo stack. MRML is touched on the main thread only.
"""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import slicer
from ClaraAnnotateLib import annotator, geometry, nodes, segments
from ClaraAnnotateLib.segments import SegmentSpec
from ClaraAnnotateLib.settings import BackendSettings
from ClaraAnnotateLib.worker import TaskQueue
from trame_slicer.segmentation.segmentation_undo_command import SegmentationLabelMapUndoCommand
from vtkmodules.util import numpy_support

from claraseg.io import Image, LabelInfo

log = logging.getLogger(__name__)

#: Point lists of the tools: name, colour (as the desktop module's).
POINT_LISTS = {"foreground": ("Clara-P", (0.2, 0.9, 0.2)), "background": ("Clara-N", (0.95, 0.2, 0.2)),
               "extreme": ("Clara-E", (1.0, 0.85, 0.1))}
EXTREME_POINT_COUNT = 6


def install_scene_globals(slicer_app) -> None:
    """``slicer.util`` helpers read ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``, which only
    Slicer's Qt application sets: point them at this process's one trame-slicer scene."""
    slicer.mrmlScene = slicer_app.scene
    modules = getattr(slicer, "modules", None) or types.SimpleNamespace()
    modules.segmentations = types.SimpleNamespace(logic=lambda: slicer_app.segmentations_logic)
    modules.markups = types.SimpleNamespace(logic=lambda: slicer_app.markups_logic._logic)
    slicer.modules = modules
    sys.modules["slicer"].mrmlScene = slicer_app.scene


def segment_voxels(segmentation_node, segment_id: str) -> int:
    """How many voxels a segment holds (its binary labelmap as stored: shared layers counted by value)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    rep = segment.GetRepresentation(nodes.LABELMAP) if segment is not None else None
    scalars = rep.GetPointData().GetScalars() if rep is not None else None
    if scalars is None:
        return 0
    return int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars) == segment.GetLabelValue()))


class WebAnnotation:
    """Clara's tools on the trame-slicer scene. ``notify(event, **data)`` reports to the page:
    ``status`` (message, level), ``busy`` (flag, label), ``points`` (counts per tool), ``voxels`` (count: the current object's size
    after a result), ``result`` (what, seconds, engine seconds)."""

    def __init__(self, slicer_app, notify: Callable[..., None]) -> None:
        self.app = slicer_app
        self.editor = slicer_app.segmentation_editor
        self.notify = notify
        self.controller = annotator.AnnotationController()
        self.queue = TaskQueue("ClaraWeb")
        self.models = {"click": "", "extreme": "", "auto": ""}
        self.tool = ""
        self._written: dict[str, int] = {}
        self._points: dict[str, Any] = {}
        self._observers: list[tuple[Any, int]] = []
        self._ignore_points = False
        self.timings: list[dict[str, float]] = []

    # ----- backend ---------------------------------------------------------------------------------
    def connect(self, settings: BackendSettings) -> annotator.ConnectionInfo:
        """Connect (blocking: called once at start-up, before the page is served)."""
        info = self.controller.connect(settings)
        for key, kinds in (("click", annotator.CLICK_KINDS), ("extreme", annotator.EXTREME_KINDS),
                           ("auto", annotator.AUTO_KINDS)):
            m = annotator.default_model(info.models, kinds)
            self.models[key] = m.name if m else ""
        return info

    def model_names(self, kinds) -> list[str]:
        models = self.controller.info.models if self.controller.info else []
        return [m.name for m in models if m.kind in kinds]

    def close(self) -> None:
        self.queue.shutdown()
        self.controller.close()

    # ----- the background queue ------------------------------------------------------------------
    def submit(self, label: str, fn, on_done, context: str):
        def failed(error):
            self.notify("busy", flag=False, label="")
            self.notify("status", message=annotator.user_message(error, context), level="error")

        def done(result):
            self.notify("busy", flag=False, label="")
            on_done(result)

        self.notify("busy", flag=True, label=label)
        return self.queue.submit(fn, label=label, on_done=done, on_error=failed,
                                 on_cancelled=lambda: self.notify("busy", flag=False, label=""))

    def poll(self) -> int:
        """Deliver finished tasks (call from the event loop, main thread)."""
        return self.queue.poll()

    # ----- scene -------------------------------------------------------------------------------------
    def volume(self):
        return self.editor.active_volume_node

    def on_scene_reset(self) -> None:
        """A new volume was loaded (the scene was cleared): new point lists, a new session on next use."""
        for node, tag in self._observers:
            node.RemoveObserver(tag)
        self._observers.clear()
        self._points.clear()
        self._written.clear()
        self.controller.close_session()
        self.set_tool("")

    def point_list(self, kind: str):
        node = self._points.get(kind)
        if node is not None and node.GetScene() is not None:
            return node
        name, color = POINT_LISTS[kind]
        node = nodes.point_list(name, color, self.app.scene)
        defined = slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
        self._observers.append((node, node.AddObserver(defined, lambda caller, event, k=kind: self._on_point(k, caller))))
        self._points[kind] = node
        return node

    def set_tool(self, tool: str) -> None:
        """"foreground", "background", "extreme" (place points in the views) or "" (no placing)."""
        self.tool = tool
        if tool in POINT_LISTS:
            self.editor.deactivate_effect()
            self.app.markups_logic.place_node(self.point_list(tool), persistent=True)
        elif self.app.markups_logic.interaction_node is not None:
            self.app.markups_logic.disable_place_mode()

    def clear_points(self) -> None:
        for node in self._points.values():
            if node.GetScene() is not None:
                node.RemoveAllControlPoints()
        self.notify("points", counts=self.point_counts())

    def point_counts(self) -> dict[str, int]:
        """Placed points per tool (what the page shows next to the tools)."""
        return {k: len(nodes.markups_world_points(n)) if n.GetScene() is not None else 0
                for k, n in self._points.items()}

    def _on_point(self, kind: str, node) -> None:
        if self._ignore_points:
            return
        n = node.GetNumberOfControlPoints()
        if n == 0:
            return
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(n - 1, p)
        self.notify("points", counts=self.point_counts())
        if kind == "extreme":
            placed = len(nodes.markups_world_points(node))
            if placed >= EXTREME_POINT_COUNT:
                self.run_extreme_points()
            else:
                self.notify("status", message=f"Extreme point {placed} of {EXTREME_POINT_COUNT} placed", level="info")
            return
        self.click_at(p, foreground=kind == "foreground")

    # ----- what the tools work on ------------------------------------------------------------------
    def target(self, need_segment: bool = True):
        """(volume, segmentation node, segment id) of the segment editor; a segment is made when none is
        selected, so the first click just works."""
        volume = self.volume()
        segmentation = self.editor.active_segmentation_node
        if volume is None or segmentation is None:
            raise annotator.NotConnectedError("open an image first (Open image, or upload one)")
        segment_id = self.editor.get_active_segment_id()
        if need_segment and not segment_id:
            n = segmentation.GetSegmentation().GetNumberOfSegments()
            segment_id = nodes.ensure_segment(segmentation, SegmentSpec(0, f"object {n + 1}", segments.palette_color(n)))
            self.editor.set_active_segment_id(segment_id)
        return volume, segmentation, segment_id

    def _prepare(self, volume, segmentation=None, segment_id=None):
        """On the main thread: the image when no session holds it, and the segment if it was painted."""
        key = nodes.image_key(volume)
        image = nodes.image_from_volume(volume) if self.controller.needs_image(key) else None
        painted = None
        if segmentation is not None and segment_id and not self.queue.busy:
            oid = segments.object_id(segmentation.GetID(), segment_id)
            mtime = nodes.segment_mtime(segmentation, segment_id)
            if mtime and self._written.get(oid) != mtime:
                delta = nodes.segment_mask_delta(segmentation, segment_id, volume)
                known = self.controller.objects.get(oid)
                if not segments.same_mask(delta, known.delta if known else None):
                    painted = delta
                self._written[oid] = mtime
        return key, image, painted

    def _open_if_needed(self, key, image) -> None:
        if image is not None and self.controller.needs_image(key):
            self.controller.open(image, key)

    def _write(self, delta, volume, segmentation, segment_id, undo: bool = True) -> None:
        """A result into its segment, as one step of the segment editor's undo stack."""
        modifier = self.editor.active_segment_modifier
        if undo and modifier is not None:
            with SegmentationLabelMapUndoCommand.push_state_change(modifier.segmentation):
                nodes.write_delta(delta, segmentation, segment_id, volume)
        else:
            nodes.write_delta(delta, segmentation, segment_id, volume)
        oid = segments.object_id(segmentation.GetID(), segment_id)
        self._written[oid] = nodes.segment_mtime(segmentation, segment_id)
        if modifier is not None:
            modifier.segmentation.trigger_modified()
        self.notify("voxels", count=segment_voxels(segmentation, segment_id))

    def _timed(self, what: str, started: float, fn, **extra):
        """Wrap a worker function: records the engine's own time of the call; ``extra`` goes with the
        result event (e.g. the voxel index a click landed on)."""

        def work(token):
            t0 = time.perf_counter()
            out = fn(token)
            return out, time.perf_counter() - t0

        def done(result, apply):
            delta, engine_s = result
            apply(delta)
            total = time.perf_counter() - started
            self.timings.append({"what": what, "total_s": total, "engine_s": engine_s})
            self.notify("result", what=what, seconds=total, engine_seconds=engine_s, **extra)

        return work, done

    # ----- the tools ---------------------------------------------------------------------------------
    def _model(self, key: str) -> str:
        name = self.models.get(key, "")
        if not name:
            raise annotator.NotConnectedError("no model for this tool: the backend offers none")
        return name

    def _slice_axis(self, volume, ras) -> int | None:
        views = {}
        for v in self.app.view_manager.get_slice_views():
            node = self.app.scene.GetNodeByID(v.get_view_node_id())
            if node is not None:
                views[node.GetID()] = nodes.matrix(node.GetSliceToRAS())
        name = geometry.pick_slice_view(views, ras, tolerance_mm=0.5 * min(volume.GetSpacing()))
        if name is None:
            return None
        m = nodes.world_to_ijk(volume)
        return geometry.slice_axis(views[name], m)

    def click_at(self, ras, foreground: bool = True):
        """One foreground/background click at a world RAS point; updates the current segment."""
        started = time.perf_counter()
        try:
            volume, segmentation, segment_id = self.target()
            model = self._model("click")
            ijk = nodes.world_points_to_ijk(volume, [ras], "click")[0].tolist()
            axis = None
            if self.controller.model(model).kind == "deepgrow2d":
                axis = self._slice_axis(volume, ras)
            key, image, painted = self._prepare(volume, segmentation, segment_id)
        except Exception as e:
            self.notify("status", message=annotator.user_message(e, "Click"), level="error")
            return None
        oid = segments.object_id(segmentation.GetID(), segment_id)
        fg, bg = ([ijk], []) if foreground else ([], [ijk])

        def run(token):
            self._open_if_needed(key, image)
            if painted is not None:
                self.controller.set_mask(oid, painted)
            token.check()
            return self.controller.click(oid, model, fg, bg, axis)

        def apply(delta):
            self._write(delta, volume, segmentation, segment_id)
            self.notify("status", message=f"{model}: segment updated", level="ok")

        work, done = self._timed("click", started, run, ijk=ijk, foreground=foreground)
        return self.submit(f"Click ({model})", work, lambda r: done(r, apply), "Click")

    def run_extreme_points(self):
        started = time.perf_counter()
        try:
            volume, segmentation, segment_id = self.target()
            model = self._model("extreme")
            points = nodes.markups_world_points(self.point_list("extreme"))
            ijk = nodes.world_points_to_ijk(volume, points, "extreme point").tolist()
            key, image, _painted = self._prepare(volume)
        except Exception as e:
            self.notify("status", message=annotator.user_message(e, "Extreme points"), level="error")
            return None
        oid = segments.object_id(segmentation.GetID(), segment_id)

        def run(token):
            self._open_if_needed(key, image)
            return self.controller.extreme_points(oid, model, ijk)

        def apply(delta):
            self._write(delta, volume, segmentation, segment_id)
            self._ignore_points = True
            try:
                self.point_list("extreme").RemoveAllControlPoints()
            finally:
                self._ignore_points = False
            self.notify("points", counts=self.point_counts())
            self.notify("status", message=f"{model}: segment from {len(ijk)} extreme points", level="ok")

        work, done = self._timed("extreme_points", started, run, points=ijk)
        return self.submit(f"Extreme points ({model})", work, lambda r: done(r, apply), "Extreme points")

    def auto_segment(self):
        started = time.perf_counter()
        try:
            volume, segmentation, _ = self.target(need_segment=False)
            model = self._model("auto")
            key, image, _painted = self._prepare(volume)
        except Exception as e:
            self.notify("status", message=annotator.user_message(e, "Auto-segment"), level="error")
            return None

        def run(token):
            self._open_if_needed(key, image)
            return self.controller.auto_segment(model)

        def apply(delta):
            per_label = segments.split_labels(delta)
            specs = {s.label_value: s for s in segments.segments_for_labels(delta.labels)}
            modifier = self.editor.active_segment_modifier
            with SegmentationLabelMapUndoCommand.push_state_change(modifier.segmentation):
                for value, d in per_label.items():
                    spec = specs.get(value) or SegmentSpec(value, f"label {value}", segments.palette_color(value))
                    segment_id = nodes.ensure_segment(segmentation, spec)
                    self._write(d, volume, segmentation, segment_id, undo=False)
            self.notify("status", message=f"{model}: {len(per_label)} segment(s)", level="ok")

        work, done = self._timed("auto_segment", started, run)
        return self.submit(f"Auto-segment ({model})", work, lambda r: done(r, apply), "Auto-segment")

    def _object_op(self, label: str, op, clear_points: bool):
        try:
            volume, segmentation, segment_id = self.target()
        except Exception as e:
            self.notify("status", message=annotator.user_message(e, label), level="error")
            return None
        oid = segments.object_id(segmentation.GetID(), segment_id)
        if clear_points:
            self.clear_points()

        def done(delta):
            self._write(delta, volume, segmentation, segment_id)
            self.notify("status", message=f"{label}: done", level="ok")

        return self.submit(label, lambda token: op(oid), done, label)

    def undo(self):
        """Undo the engine's last interaction on the current segment."""
        return self._object_op("Undo", self.controller.undo, False)

    def clear(self):
        """Clear the current segment and its points."""
        return self._object_op("Clear", self.controller.clear, True)

    # ----- export ------------------------------------------------------------------------------------
    def labelmap(self) -> tuple[Image, dict[int, str]]:
        """The segmentation as one label map on the volume's grid: segment n (in list order) -> value n."""
        volume, segmentation, _ = self.target(need_segment=False)
        seg = segmentation.GetSegmentation()
        ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
        if not ids:
            raise annotator.InvalidPointsError("the segmentation is empty: segment something first")
        out = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=np.uint16 if len(ids) > 255 else np.uint8)
        names = {}
        for value, segment_id in enumerate(ids, start=1):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
            out[mask != 0] = value
            segment = seg.GetSegment(segment_id)
            names[value] = segments.label_key(segment.GetName())
        image = geometry.image_from_array(out, nodes.ijk_to_ras(volume))
        image.labels = {v: LabelInfo(n, tuple(seg.GetSegment(i).GetColor())) for v, (n, i) in
                        enumerate(zip(names.values(), ids), start=1)}
        return image, names
