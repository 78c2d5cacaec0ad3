"""The annotation tools on a MRML scene, without Qt: shared by the Slicer module panel, the Segment Editor
effect and Clara Annotate Web (trame-slicer).

:class:`InteractionLogic` reads the Segment Editor's volume, segmentation and segment, turns points into
voxel indices, runs every backend call on a :class:`~ClaraAnnotateLib.worker.TaskQueue` and writes each
result back as one undo step, obeying the editor's masking settings. MRML is touched on the thread that
calls it (the owner of the scene) only: the worker functions defined here capture plain values (arrays,
indices, ids) and never nodes. Results come back when the owner calls :meth:`InteractionLogic.poll`
(Slicer: a Qt timer, see :mod:`.desktop`; the web app: its event loop) or :meth:`InteractionLogic.wait`.
"""

import logging

import slicer
from slicer.util import VTKObservationMixin

from . import annotator, nodes, segments
from .i18n import tr as _
from .pointlists import POINT_LISTS, PointListsMixin, ToolState
from .segments import SegmentSpec
from .settings import BackendSettings
from .worker import TaskQueue

log = logging.getLogger(__name__)
#: Maximum number of Segment Editor undo states kept by the logic's own editor logics.
UNDO_STATES = 10


__all__ = ["POINT_LISTS", "UNDO_STATES", "InteractionLogic", "ToolState"]


class InteractionLogic(PointListsMixin, VTKObservationMixin):
    """The annotation tools on one scene (see the module docstring).

    ``scene``: the MRML scene (default: ``slicer.mrmlScene`` inside Slicer). ``editorNode``: the segment
    editor node whose volume, segmentation, selected segment and masking settings the tools use (default:
    the Segment Editor module's singleton node, created when missing). Every tool method also takes an
    ``editorNode`` to work for another editor (the Segment Editor effect passes its own) and a ``saveUndo``
    callable to record the undo step somewhere else (default: :meth:`saveStateForUndo`).

    Listeners (any object) receive ``onStatus(message, level)``, ``onBusyChanged(busy, label)``,
    ``onProgress(fraction, message)``, ``onConnectionChanged(info)``, ``onModelsChanged(models)`` and
    ``onPointsChanged()`` when they define them.
    """

    def __init__(self, scene=None, editorNode=None) -> None:
        super().__init__()  # cooperative: ScriptedLoadableModuleLogic.__init__ reaches here through super()
        self._scene = scene
        self._editorNode = editorNode
        self.controller = annotator.AnnotationController()
        self.queue = TaskQueue()
        self.connectionInfo = None
        self.listeners = []
        self._ignorePointEvents = False
        self._written = {}
        self._selected = None
        self._toolState = None
        self._editorLogics = {}

    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise annotator.NotConnectedError("no MRML scene: pass the scene to InteractionLogic(scene)")
        return scene

    def getParameterNode(self):
        """The tools' state (:class:`ToolState`); the Slicer module returns its parameter node instead."""
        if self._toolState is None:
            self._toolState = ToolState()
        return self._toolState

    # ----- listeners -----------------------------------------------------------------------------
    def addListener(self, listener) -> None:
        if listener not in self.listeners:
            self.listeners.append(listener)

    def removeListener(self, listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def _notify(self, method: str, *args) -> None:
        for listener in list(self.listeners):
            fn = getattr(listener, method, None)
            if fn is not None:
                fn(*args)

    def status(self, message: str, level: str = "info") -> None:
        (log.warning if level in ("error", "warning") else log.info)(message)
        self._notify("onStatus", message, level)

    # ----- the background queue ------------------------------------------------------------------
    def submit(self, label: str, fn, onDone=None, context: str = ""):
        """Run ``fn(token)`` off the owner's thread; ``onDone(result)`` runs in :meth:`poll`."""

        def failed(error):
            self.status(annotator.user_message(error, context or label), "error")

        task = self.queue.submit(fn, label=label, on_done=onDone, on_error=failed,
                                 on_progress=lambda f, m: self._notify("onProgress", f, m),
                                 on_cancelled=lambda: self.status(_("{label}: cancelled").format(label=label), "warning"))
        self._notify("onBusyChanged", True, label)
        self.startPolling()
        return task

    def startPolling(self) -> None:
        """Called when work is queued: the application arranges for :meth:`poll` to be called until the
        queue is idle (Slicer: a Qt timer). Nothing here: the caller polls."""

    def stopPolling(self) -> None:
        """Called when the queue went idle."""

    def poll(self) -> None:
        """Deliver finished work (its ``onDone`` runs here, on the caller's thread: it writes MRML)."""
        self.queue.poll()
        if not self.queue.busy:
            self.queue.poll()
            self.stopPolling()
            self._notify("onBusyChanged", False, "")

    def pumpEvents(self) -> None:
        """Called while :meth:`wait` blocks (Slicer: process Qt events so that the GUI stays alive)."""

    def cancel(self) -> None:
        n = self.queue.cancel_all()
        backend = self.controller.backend
        if n and hasattr(backend, "cancel"):
            backend.cancel()  # the remote client abandons its in-flight request at once
        if n:
            self.status(_("Cancelling..."), "warning")

    def wait(self, task, timeout: float = 600.0):
        """Block until a task is delivered (its ``onDone`` has run); for scripts and tests."""
        self.queue.wait(task, timeout, pump=self.pumpEvents)
        self.poll()
        return task

    def waitIdle(self, timeout: float = 600.0) -> None:
        """Block until every queued task is delivered (e.g. the click a placed point started)."""
        self.queue.wait_idle(timeout, pump=self.pumpEvents)
        self.poll()

    # ----- backend -------------------------------------------------------------------------------
    def connect(self, settings: BackendSettings):
        def done(info):
            self.connectionInfo = info
            self._notify("onConnectionChanged", info)
            self.status(info.summary, "ok")

        self.connectionInfo = None
        self._notify("onConnectionChanged", None)
        return self.submit(_("Connecting"), lambda token: self.controller.connect(settings), done,
                           context=_("Cannot connect"))

    def refreshModels(self):
        def done(models):
            if self.connectionInfo is not None:
                self.connectionInfo.models = models
            self._notify("onModelsChanged", models)
            self.status(_("{n} model(s) available").format(n=len(models)), "ok")

        return self.submit(_("Refreshing models"), lambda token: self.controller.refresh_models(), done)

    # ----- what the interactions work on ---------------------------------------------------------
    def segmentEditorNode(self):
        """The editor node the tools use by default (see the class docstring)."""
        if self._editorNode is not None:
            return self._editorNode
        scene = self.scene
        node = scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("SegmentEditor")
            node = scene.AddNode(node)
        return node

    def editorLogic(self, editorNode=None):
        """The Qt-free ``vtkSlicerSegmentEditorLogic`` of an editor node (one per node, with its own undo
        history); None in Slicer before 5.10, which has none."""
        cls = getattr(slicer, "vtkSlicerSegmentEditorLogic", None)
        if cls is None:
            return None
        editorNode = editorNode or self.segmentEditorNode()
        key = editorNode.GetID() or id(editorNode)
        logic = self._editorLogics.get(key)
        if logic is None or logic.GetSegmentEditorNode() is not editorNode:
            logic = cls()
            logic.SetMRMLScene(editorNode.GetScene())
            logic.SetSegmentEditorNode(editorNode)
            logic.SetMaximumNumberOfUndoStates(UNDO_STATES)
            self._editorLogics[key] = logic
        return logic

    def saveStateForUndo(self, editorNode=None) -> None:
        """One Segment Editor undo step, through the editor logic (Qt-free)."""
        logic = self.editorLogic(editorNode)
        if logic is not None:
            logic.SaveStateForUndo()

    def undoEdit(self, editorNode=None) -> bool:
        """Revert the last result written by these tools (or any step saved in the same editor logic)."""
        logic = self.editorLogic(editorNode)
        if logic is None or not logic.CanUndo():
            return False
        logic.Undo()
        return True

    def redoEdit(self, editorNode=None) -> bool:
        logic = self.editorLogic(editorNode)
        if logic is None or not logic.CanRedo():
            return False
        logic.Redo()
        return True

    def target(self, needSegment: bool = True, editorNode=None):
        """(volume, segmentation, segment id) the editor works on; creates a segmentation and a segment
        when missing, so the first click just works."""
        if editorNode is None:
            editorNode = self.segmentEditorNode()
        scene = editorNode.GetScene() or self.scene
        volume = editorNode.GetSourceVolumeNode()
        if volume is None:
            # GetFirstNodeByClass matches subclasses (IsA): skip label maps, they are not images
            volume = next((v for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene)
                           if not v.IsA("vtkMRMLLabelMapVolumeNode")), None)
            if volume is None:
                raise annotator.NotConnectedError(_("load a volume first (File > Add Data, or Sample Data)"))
            editorNode.SetAndObserveSourceVolumeNode(volume)
        segmentation = editorNode.GetSegmentationNode()
        if segmentation is None:
            segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume.GetName() + " segmentation")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            editorNode.SetAndObserveSegmentationNode(segmentation)
        segmentId = editorNode.GetSelectedSegmentID()
        if needSegment and not segmentId:
            n = segmentation.GetSegmentation().GetNumberOfSegments()
            segmentId = nodes.ensure_segment(segmentation, SegmentSpec(0, f"object {n + 1}", segments.palette_color(n)))
            editorNode.SetSelectedSegmentID(segmentId)
        return volume, segmentation, segmentId

    def _objectId(self, segmentation, segmentId) -> str:
        return segments.object_id(segmentation.GetID(), segmentId)

    def _prepare(self, volume, segmentation=None, segmentId=None):
        """On the owner's thread: what the worker needs to (re)open the image and sync a painted segment."""
        key = nodes.image_key(volume)
        image = nodes.image_from_volume(volume) if self.controller.needs_image(key) else None
        painted = None
        if segmentation is not None and segmentId and not self.queue.busy:
            # Changed since we last wrote it? (Shared labelmap layers change together, so compare content.)
            oid = self._objectId(segmentation, segmentId)
            mtime = nodes.segment_mtime(segmentation, segmentId)
            if mtime and self._written.get(oid) != mtime:
                delta = nodes.segment_mask_delta(segmentation, segmentId, volume)
                known = self.controller.objects.get(oid)
                if not segments.same_mask(delta, known.delta if known else None):
                    painted = delta
                self._written[oid] = mtime
        return key, image, painted

    def _openIfNeeded(self, key, image) -> None:
        if image is not None and self.controller.needs_image(key):
            self.controller.open(image, key)

    def _apply(self, delta, volume, segmentation, segmentId, saveUndo=None, undo: bool = True, editorNode=None) -> None:
        """Write a result into its segment as one undo step, with the editor's masking settings."""
        if undo:
            if saveUndo is not None:
                saveUndo()
            else:
                self.saveStateForUndo(editorNode)
        nodes.write_delta(delta, segmentation, segmentId, volume, editor_logic=self.editorLogic(editorNode))
        self._written[self._objectId(segmentation, segmentId)] = nodes.segment_mtime(segmentation, segmentId)

    # ----- interactions --------------------------------------------------------------------------
    def _modelName(self, field: str, kinds) -> str:
        name = getattr(self.getParameterNode(), field)
        if not name and self.connectionInfo is not None:
            m = annotator.default_model(self.connectionInfo.models, kinds)
            name = m.name if m else ""
        if not name:
            raise annotator.NotConnectedError(_("no model for this tool: connect to a backend that offers one"))
        return name

    def clickAt(self, ras, foreground: bool, sliceNode=None, saveUndo=None, editorNode=None):
        """One foreground/background click at a world RAS point; updates the current segment at once.
        ``sliceNode``: the view the click came from (2D models); found from the point when None."""
        try:
            volume, segmentation, segmentId = self.target(editorNode=editorNode)
            model = self._modelName("clickModel", annotator.CLICK_KINDS)
            ijk = nodes.world_points_to_ijk(volume, [ras], "click")[0].tolist()
            axis = None
            if self.controller.info and self.controller.model(model).kind == "deepgrow2d":
                axis = (nodes.slice_axis_for_view(sliceNode, volume) if sliceNode is not None
                        else nodes.slice_axis_for_point(volume, ras))
            key, image, painted = self._prepare(volume, segmentation, segmentId)
        except Exception as e:
            self.status(annotator.user_message(e, _("Click")), "error")
            return None
        oid = self._objectId(segmentation, segmentId)
        fg, bg = ([ijk], []) if foreground else ([], [ijk])

        def work(token):
            self._openIfNeeded(key, image)
            if painted is not None:
                self.controller.set_mask(oid, painted)
            token.check()
            return self.controller.click(oid, model, fg, bg, axis)

        def done(delta):
            self._apply(delta, volume, segmentation, segmentId, saveUndo, editorNode=editorNode)
            self.status(_("{model}: segment updated ({n} voxels in the changed box)").format(
                model=model, n=int(delta.mask.size)), "ok")

        return self.submit(_("Click ({model})").format(model=model), work, done, context=_("Click"))

    def runExtremePoints(self, points_ras=None, saveUndo=None, editorNode=None):
        try:
            volume, segmentation, segmentId = self.target(editorNode=editorNode)
            model = self._modelName("extremeModel", annotator.EXTREME_KINDS)
            if points_ras is None:
                points_ras = nodes.markups_world_points(self.getParameterNode().extremePoints)
            ijk = nodes.world_points_to_ijk(volume, points_ras, "extreme point").tolist()
            key, image, _painted = self._prepare(volume)
        except Exception as e:
            self.status(annotator.user_message(e, _("Extreme points")), "error")
            return None
        oid = self._objectId(segmentation, segmentId)

        def work(token):
            self._openIfNeeded(key, image)
            return self.controller.extreme_points(oid, model, ijk)

        def done(delta):
            self._apply(delta, volume, segmentation, segmentId, saveUndo, editorNode=editorNode)
            self.status(_("{model}: segment updated from {n} extreme points").format(model=model, n=len(ijk)), "ok")

        return self.submit(_("Extreme points ({model})").format(model=model), work, done, context=_("Extreme points"))

    def runAutoSegment(self, saveUndo=None, editorNode=None):
        try:
            volume, segmentation, _segmentId = self.target(needSegment=False, editorNode=editorNode)
            model = self._modelName("autoModel", annotator.AUTO_KINDS)
            key, image, _painted = self._prepare(volume)
        except Exception as e:
            self.status(annotator.user_message(e, _("Auto-segment")), "error")
            return None

        def work(token):
            self._openIfNeeded(key, image)
            token.progress(None, _("Segmenting with {model}").format(model=model))
            return self.controller.auto_segment(model)

        def done(delta):
            perLabel = segments.split_labels(delta)
            specs = {s.label_value: s for s in segments.segments_for_labels(delta.labels)}
            if saveUndo is not None:
                saveUndo()
            else:
                self.saveStateForUndo(editorNode)
            with slicer.util.NodeModify(segmentation):
                for value, d in perLabel.items():
                    spec = specs.get(value) or segments.SegmentSpec(value, f"label {value}", segments.palette_color(value))
                    segmentId = nodes.ensure_segment(segmentation, spec)
                    self._apply(d, volume, segmentation, segmentId, undo=False, editorNode=editorNode)
            self.status(_("{model}: {n} segment(s)").format(model=model, n=len(perLabel)), "ok")

        return self.submit(_("Auto-segment ({model})").format(model=model), work, done, context=_("Auto-segment"))

    def refineFromSegment(self, editorNode=None):
        """Hand the current (painted) segment to the backend; later clicks refine it."""
        try:
            volume, segmentation, segmentId = self.target(editorNode=editorNode)
            key, image, _painted = self._prepare(volume)
            mask = nodes.segment_mask_delta(segmentation, segmentId, volume)
        except Exception as e:
            self.status(annotator.user_message(e, _("Refine")), "error")
            return None
        oid = self._objectId(segmentation, segmentId)

        def work(token):
            self._openIfNeeded(key, image)
            self.controller.set_mask(oid, mask)

        def done(_result):
            self._written[oid] = nodes.segment_mtime(segmentation, segmentId)
            self.status(_("Segment handed to the model: add clicks to refine it"), "ok")

        return self.submit(_("Refine painted segment"), work, done, context=_("Refine"))

    def _objectOp(self, label: str, op, clearPoints: bool, saveUndo=None, editorNode=None):
        try:
            volume, segmentation, segmentId = self.target(editorNode=editorNode)
        except Exception as e:
            self.status(annotator.user_message(e, label), "error")
            return None
        oid = self._objectId(segmentation, segmentId)
        if clearPoints:
            self.clearPoints()

        def done(delta):
            self._apply(delta, volume, segmentation, segmentId, saveUndo, editorNode=editorNode)
            self.status(_("{label}: done").format(label=label), "ok")

        return self.submit(label, lambda token: op(oid), done, context=label)

    def undoObject(self, saveUndo=None, editorNode=None):
        """Undo the model's last step on the current segment (the backend's undo, written as a new step)."""
        return self._objectOp(_("Undo"), self.controller.undo, False, saveUndo, editorNode)

    def clearObject(self, saveUndo=None, editorNode=None):
        return self._objectOp(_("Clear"), self.controller.clear, True, saveUndo, editorNode)

    def close(self) -> None:
        """Drop observers, the backend session and the worker thread."""
        self.removeObservers()
        self.controller.close()
        self.queue.shutdown()
