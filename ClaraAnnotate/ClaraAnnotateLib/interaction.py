"""The MRML side of the annotation tools, shared by the module panel and the Segment Editor effect.

Reads the Segment Editor's volume, segmentation and segment, turns points into voxel indices, runs every
backend call on the :class:`~ClaraAnnotateLib.worker.TaskQueue` and writes results back as one undo step
each. Needs Slicer (imported only inside it); MRML and Qt are touched on the main thread only: the worker
functions defined here capture plain values (arrays, indices, ids) and never nodes.
"""

import logging

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from . import annotator, install, nodes, segments
from .segments import SegmentSpec
from .settings import BackendSettings
from .worker import TaskQueue

log = logging.getLogger(__name__)
POINT_LISTS = {"foreground": ("Clara-P", (0.2, 0.9, 0.2)), "background": ("Clara-N", (0.95, 0.2, 0.2)),
               "extreme": ("Clara-E", (1.0, 0.85, 0.1))}


class InteractionLogic(VTKObservationMixin):
    """Mixed into ``ClaraAnnotateLogic``; ``getParameterNode()`` comes from there."""

    def __init__(self) -> None:
        super().__init__()  # cooperative: ScriptedLoadableModuleLogic.__init__ reaches here through super()
        self.controller = annotator.AnnotationController()
        self.queue = TaskQueue()
        self.connectionInfo = None
        self.listeners = []
        self._ignorePointEvents = False
        self._written = {}
        self._selected = None
        self._timer = qt.QTimer()
        self._timer.setInterval(30)
        self._timer.connect("timeout()", self._poll)

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
        slicer.util.showStatusMessage(message, 5000)

    # ----- the background queue ------------------------------------------------------------------
    def submit(self, label: str, fn, onDone=None, context: str = ""):
        """Run ``fn(token)`` off the GUI thread; ``onDone(result)`` runs back on the main thread."""

        def failed(error):
            self.status(annotator.user_message(error, context or label), "error")

        task = self.queue.submit(fn, label=label, on_done=onDone, on_error=failed,
                                 on_progress=lambda f, m: self._notify("onProgress", f, m),
                                 on_cancelled=lambda: self.status(_("{label}: cancelled").format(label=label), "warning"))
        self._notify("onBusyChanged", True, label)
        if not self._timer.isActive():
            self._timer.start()
        return task

    def _poll(self) -> None:
        self.queue.poll()
        if not self.queue.busy:
            self.queue.poll()
            self._timer.stop()
            self._notify("onBusyChanged", False, "")

    def cancel(self) -> None:
        n = self.queue.cancel_all()
        backend = self.controller.backend
        if n and hasattr(backend, "cancel"):
            backend.cancel()  # the remote client abandons its in-flight request at once
        if n:
            self.status(_("Cancelling..."), "warning")

    def wait(self, task, timeout: float = 600.0):
        """Block (pumping Qt events) until a task is delivered; for scripts and self-tests."""
        self.queue.wait(task, timeout, pump=slicer.app.processEvents)
        self._poll()
        return task

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

    def installLocalRequirements(self, confirm: bool = True) -> bool:
        """Install PyTorch and MONAI into Slicer's Python (explicit user action only)."""
        try:
            import PyTorchUtils  # the PyTorch extension, when installed

            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        except ImportError:
            torchLogic = None
        steps = install.plan_install(have_pytorch_utils=torchLogic is not None)
        text = install.describe_plan(steps)
        if not steps:
            self.status(text, "ok")
            return True
        if confirm and not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Install local mode")):
            return False
        progress = slicer.util.createProgressDialog(labelText=text, maximum=len(steps), windowTitle=_("Install local mode"))
        try:
            for n, step in enumerate(steps):
                progress.labelText = _("Installing {req} ({n} of {total})...").format(
                    req=step.requirement, n=n + 1, total=len(steps))
                progress.value = n
                slicer.app.processEvents()
                self.status(progress.labelText)
                try:
                    # shows the error, then re-raises it (slicer.util.tryWithErrorDisplay always does)
                    with slicer.util.tryWithErrorDisplay(_("Installing {req} failed").format(req=step.requirement),
                                                         waitCursor=True):
                        if step.via == "pytorchutils":
                            torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=step.requirement[5:])
                        else:
                            slicer.util.pip_install(step.requirement)
                except Exception:
                    log.exception("installing %s failed", step.requirement)
                    break  # the steps after it depend on it; the check below says what is missing
                if progress.wasCanceled:
                    break
        finally:
            progress.close()
        missing = install.plan_install(have_pytorch_utils=torchLogic is not None)
        if missing:
            self.status(_("Still missing: {names}. Restart Slicer and try again.").format(
                names=", ".join(s.requirement for s in missing)), "error")
            return False
        self.status(_("PyTorch and MONAI are installed; choose Local and click Connect."), "ok")
        return True

    # ----- what the interactions work on ---------------------------------------------------------
    def segmentEditorNode(self):
        """The Segment Editor's parameter node (its current volume, segmentation and segment)."""
        node = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("SegmentEditor")
            node = slicer.mrmlScene.AddNode(node)
        return node

    def target(self, needSegment: bool = True, editorNode=None):
        """(volume, segmentation, segment id) the Segment Editor works on; creates a segmentation and a
        segment when missing, so the first click just works. ``editorNode``: the segment editor node of
        the editor the request came from (the effect's ``parameterSetNode()``); default: the Segment
        Editor module's, which the panel's embedded editor shares."""
        if editorNode is None:
            editorNode = self.segmentEditorNode()
        volume = editorNode.GetSourceVolumeNode()
        if volume is None:
            # GetFirstNodeByClass matches subclasses (IsA): skip label maps, they are not images
            volume = next((v for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                           if not v.IsA("vtkMRMLLabelMapVolumeNode")), None)
            if volume is None:
                raise annotator.NotConnectedError(_("load a volume first (File > Add Data, or Sample Data)"))
            editorNode.SetAndObserveSourceVolumeNode(volume)
        segmentation = editorNode.GetSegmentationNode()
        if segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume.GetName() + " segmentation")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            editorNode.SetAndObserveSegmentationNode(segmentation)
        segmentId = editorNode.GetSelectedSegmentID()
        if needSegment and not segmentId:
            n = segmentation.GetSegmentation().GetNumberOfSegments()
            segmentId = nodes.ensure_segment(segmentation, SegmentSpec(0, f"object {n + 1}", segments.palette_color(n)))
            editorNode.SetSelectedSegmentID(segmentId)
        return volume, segmentation, segmentId

    def ensurePointLists(self, pn) -> None:
        for attr, key in (("foregroundPoints", "foreground"), ("backgroundPoints", "background"),
                          ("extremePoints", "extreme")):
            node = getattr(pn, attr)
            if node is None:
                name, color = POINT_LISTS[key]
                node = nodes.point_list(name, color)
                setattr(pn, attr, node)
            defined = slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
            if key != "extreme":
                if not self.hasObserver(node, defined, self._onPointDefined):
                    self.addObserver(node, defined, self._onPointDefined)
            else:
                for event in (defined, slicer.vtkMRMLMarkupsNode.PointRemovedEvent):
                    if not self.hasObserver(node, event, self._onExtremePointsChanged):
                        self.addObserver(node, event, self._onExtremePointsChanged)

        editorNode = self.segmentEditorNode()
        if not self.hasObserver(editorNode, vtk.vtkCommand.ModifiedEvent, self._onEditorNodeModified):
            self.addObserver(editorNode, vtk.vtkCommand.ModifiedEvent, self._onEditorNodeModified)

    def _onEditorNodeModified(self, caller, event) -> None:
        """Points belong to one segment: picking another segment starts its clicks afresh."""
        seg = caller.GetSegmentationNode()
        current = (seg.GetID() if seg else None, caller.GetSelectedSegmentID())
        previous, self._selected = self._selected, current
        if previous is not None and previous[1] and current != previous:  # not when a first segment is made
            pn = self.getParameterNode()
            for node in (pn.foregroundPoints, pn.backgroundPoints, pn.extremePoints):
                if node is not None and node.GetNumberOfControlPoints():
                    node.RemoveAllControlPoints()

    def _onExtremePointsChanged(self, caller, event) -> None:
        self._notify("onPointsChanged")

    @vtk.calldata_type(vtk.VTK_INT)
    def _onPointDefined(self, caller, event, index=None) -> None:
        """A point was placed. ``index`` is the event's call data: the point placed is not always the last
        one (placing fills the list's first unplaced point). A deferred event (fired by EndModify) has no
        call data: then the last point is taken."""
        if self._ignorePointEvents:
            return
        pn = self.getParameterNode()
        foreground = caller is pn.foregroundPoints
        n = caller.GetNumberOfControlPoints()
        if index is None or not 0 <= index < n:
            index = n - 1
        if index < 0:
            return
        p = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(index, p)
        self.clickAt(p, foreground)

    def addPoint(self, pointList, ras) -> None:
        """Show a point the Segment Editor effect received (without triggering a second click)."""
        self._ignorePointEvents = True
        try:
            pointList.AddControlPointWorld(float(ras[0]), float(ras[1]), float(ras[2]))
        finally:
            self._ignorePointEvents = False

    def _objectId(self, segmentation, segmentId) -> str:
        return segments.object_id(segmentation.GetID(), segmentId)

    def _prepare(self, volume, segmentation=None, segmentId=None):
        """On the main thread: what the worker needs to (re)open the image and sync a painted segment."""
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

    def _apply(self, delta, volume, segmentation, segmentId, saveUndo=None, undo: bool = True) -> None:
        """Write a result into its segment as one undo step (main thread)."""
        if undo:
            (saveUndo or self.saveStateForUndo)()
        nodes.write_delta(delta, segmentation, segmentId, volume)
        self._written[self._objectId(segmentation, segmentId)] = nodes.segment_mtime(segmentation, segmentId)

    def saveStateForUndo(self) -> None:
        """One undo step in the module panel's embedded Segment Editor (the effect passes its own)."""
        slicer.util.getModuleWidget(self.moduleName).ui.embeddedSegmentEditorWidget.saveStateForUndo()

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
            self._apply(delta, volume, segmentation, segmentId, saveUndo)
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
            self._apply(delta, volume, segmentation, segmentId, saveUndo)
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
            (saveUndo or self.saveStateForUndo)()
            with slicer.util.NodeModify(segmentation):
                for value, d in perLabel.items():
                    spec = specs.get(value) or segments.SegmentSpec(value, f"label {value}", segments.palette_color(value))
                    segmentId = nodes.ensure_segment(segmentation, spec)
                    self._apply(d, volume, segmentation, segmentId, undo=False)
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
            pn = self.getParameterNode()
            for node in (pn.foregroundPoints, pn.backgroundPoints, pn.extremePoints):
                if node is not None:
                    node.RemoveAllControlPoints()

        def done(delta):
            self._apply(delta, volume, segmentation, segmentId, saveUndo)
            self.status(_("{label}: done").format(label=label), "ok")

        return self.submit(label, lambda token: op(oid), done, context=label)

    def undoObject(self, saveUndo=None, editorNode=None):
        return self._objectOp(_("Undo"), self.controller.undo, False, saveUndo, editorNode)

    def clearObject(self, saveUndo=None, editorNode=None):
        return self._objectOp(_("Clear"), self.controller.clear, True, saveUndo, editorNode)


