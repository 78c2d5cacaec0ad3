"""The fine-tuning panel's logic: export the scene's data, start and follow jobs, plot curves, run the
AutoML search process. Needs Slicer's MRML libraries, not Qt (the desktop application's timers, cursor
and settings are added by :mod:`.desktop`). Job control and network calls run on a
:class:`~ClaraAnnotateLib.worker.TaskQueue`; MRML is touched on the owner's thread only. The owner calls
:meth:`TrainLogic.pollQueue` while the queue is busy and :meth:`TrainLogic.poll` about every second while
a job runs (:meth:`TrainLogic.wait` does both).
"""

import contextlib
import logging
import os
import subprocess
import tempfile
import time

import slicer
from ClaraAnnotateLib import nodes
from ClaraAnnotateLib.annotator import user_message
from ClaraAnnotateLib.i18n import tr as _
from ClaraAnnotateLib.worker import TaskQueue

from claraseg.errors import ConfigError
from claraseg.io import read_image

from . import automl, jobs, plots

log = logging.getLogger(__name__)
POLL_MS = 1000


class TrainLogic:
    """Mixed into ``ClaraTrainModuleLogic`` (through :class:`.desktop.DesktopTrainLogic`). Without a widget it
    is driven from scripts, the self-test and tests; ``listener`` (the widget) receives ``onStatus``,
    ``onJobChanged`` and ``onTrialsChanged``. ``annotate``: the annotation logic whose backend and models
    are used (default: Clara Annotate's shared logic); ``scene``: where the curves go (default:
    ``slicer.mrmlScene``); ``workRoot``: where exported data and local jobs live."""

    def __init__(self, annotate=None, scene=None, workRoot=None) -> None:
        super().__init__()  # cooperative: ScriptedLoadableModuleLogic.__init__ reaches here through super()
        self.listener = None
        self.job = None
        self.automlProcess = None
        self.automlDir = None
        self.appliedOverrides = {}
        self.plotNodes = {}
        self._annotate = annotate
        self._scene = scene
        self.workRoot = workRoot or os.path.join(tempfile.gettempdir(), "ClaraTrain")
        self.queue = TaskQueue("ClaraTrainWorker")
        self._polling = None

    # ----- what the application provides (Slicer: Qt timers, the wait cursor, QSettings) ---------
    def startJobPolling(self):
        """Called when a job starts or resumes: arrange for :meth:`poll` about every second."""

    def stopJobPolling(self):
        """Called when the job ended."""

    def startQueuePolling(self):
        """Called when work is queued: arrange for :meth:`pollQueue` until the queue is idle."""

    def stopQueuePolling(self):
        """Called when the queue went idle."""

    def startAutoMLPolling(self):
        """Called when an AutoML search starts: arrange for :meth:`pollAutoML` every few seconds."""

    def stopAutoMLPolling(self):
        """Called when the AutoML search process ended."""

    def pumpEvents(self):
        """Called while :meth:`wait` blocks."""

    def busyCursor(self):
        """A context shown while the data is exported."""
        return contextlib.nullcontext()

    def serverToken(self):
        """The annotation server's token (the desktop module reads it from the settings)."""
        backend = self.annotateLogic().controller.backend
        return getattr(backend, "token", None) or None

    def showChart(self, chart):
        """Put the curves' chart where the user sees it (Slicer: the plot view of the layout)."""

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    def _notify(self, method, *args):
        fn = getattr(self.listener, method, None) if self.listener else None
        if fn is not None:
            fn(*args)

    def status(self, message, level="info"):
        (log.warning if level in ("error", "warning") else log.info)(message)
        self._notify("onStatus", message, level)

    def annotateLogic(self):
        if self._annotate is not None:
            return self._annotate
        from ClaraAnnotate import ClaraAnnotateLogic

        return ClaraAnnotateLogic.shared()

    def trainableModels(self):
        info = self.annotateLogic().connectionInfo
        return [m for m in (info.models if info else []) if m.kind in jobs.TRAINABLE_KINDS]

    def datastoreImages(self):
        backend = self.annotateLogic().controller.backend
        if backend is None or not hasattr(backend, "datastore"):
            return []
        try:
            store = backend.datastore(full=False)
        except Exception as e:
            log.info("datastore not available: %s", e)
            return []
        images = store.get("images") or store.get("objects") or {}
        return sorted(images) if isinstance(images, (dict, list)) else []

    # ----- fine-tune jobs ------------------------------------------------------------------------
    def exportCases(self, pairs, folder):
        from . import export

        return export.export_cases(pairs, folder)

    def start(self, settings, pairs, datastoreImages=()):
        """Export the data (main thread: MRML), then create and start the job off the GUI thread."""
        try:
            settings.validate()
            model = next((m for m in self.trainableModels() if m.name == settings.model), None)
            if model is None:
                raise ConfigError(f"model '{settings.model}' is not offered by the connected backend")
            workdir = os.path.join(self.workRoot, time.strftime("%Y%m%d-%H%M%S-") + settings.model.replace("@", "-v"))
            if settings.where == "server":
                info = self.annotateLogic().controller.info
                if info is None or info.mode != "remote":
                    raise ConfigError("to train on the server, connect Clara Annotate to it (Remote) first")
                jobs.check_enough_cases(len(pairs) + len(datastoreImages), model.kind, settings.val_split)
                folder = tempfile.mkdtemp(prefix="clara-upload-")
                uploads = [(case, nodes.image_from_volume(volume))
                           for case, (volume, _seg) in zip(self.exportCases(pairs, folder), pairs)]
                token = self.serverToken()
                job = jobs.RemoteJob(info.url, token, settings.model, settings, list(datastoreImages))
                backend = self.annotateLogic().controller.backend

                def create(tok):
                    for case, image in uploads:  # send the scene's pairs to the datastore first
                        backend.upload_image(image, case.name)
                        backend.save_label(case.name, read_image(case.label, label=True), tag="final")
                        job.images.append(case.name)
                        tok.check()
                    return job.start()
            else:
                jobs.check_enough_cases(len(pairs), model.kind, settings.val_split)
                with self.busyCursor():
                    cases = self.exportCases(pairs, os.path.join(workdir, "data"))
                datalist = jobs.write_datalist(cases, os.path.join(workdir, "data"))
                bundle, registry = self.bundleAndRegistry(model)
                job = jobs.LocalJob(bundle, datalist, settings, os.path.join(workdir, "job"), registry=registry)

                def create(tok):
                    return job.start()
        except Exception as e:
            self.status(user_message(e, _("Cannot start the job")), "error")
            return None
        self.job = job
        self.plotNodes = {}

        def started(_job):
            self.status(_("Job {id} started").format(id=job.id), "ok")
            self._notify("onJobChanged", job.progress)
            self.startJobPolling()

        return self.submit(_("Starting the job"), create, started)

    def bundleAndRegistry(self, model):
        """The model's bundle folder and the folder the local backend serves (new versions go there)."""
        registry = getattr(self.annotateLogic().controller.backend, "registry", None)
        publishDir = getattr(registry, "publish_dir", None)
        return jobs.bundle_for(model, publishDir), publishDir

    def submit(self, label, fn, onDone=None):
        """Run job and network calls off the owner's thread; results come back through :meth:`pollQueue`."""
        task = self.queue.submit(fn, label=label, on_done=onDone,
                                 on_error=lambda e: self.status(user_message(e, label), "error"))
        self.startQueuePolling()
        return task

    def pollQueue(self):
        self.queue.poll()
        if not self.queue.busy:
            self.queue.poll()
            self.stopQueuePolling()

    def poll(self):
        """Timer tick: read the job's new events (off the owner's thread), then update the panel and the plot."""
        if self.job is None:
            self.stopJobPolling()
            return
        if self._polling is not None and not self._polling.finished:
            return
        job = self.job

        def done(events):
            progress = job.progress
            if events:
                self.updatePlot(progress)
            self._notify("onJobChanged", progress)
            if progress.finished:
                self.stopJobPolling()
                if progress.state == "completed":
                    self.annotateLogic().refreshModels()  # the new version is selectable at once

        self._polling = self.submit(_("Following the job"), lambda tok: job.new_events(), done)

    def stop(self):
        if self.job is not None:
            self.submit(_("Stopping the job"), lambda tok: self.job.stop())
            self.status(_("Stopping after the current iteration..."), "warning")

    def resume(self):
        if self.job is None:
            return
        job = self.job

        def resumed(_job):
            self.startJobPolling()
            self._notify("onJobChanged", job.progress)

        self.submit(_("Resuming the job"), lambda tok: job.resume(), resumed)

    def wait(self, timeout=900.0):
        """Follow the job until it ends and its last events are shown (scripts, self-tests, tests)."""
        deadline = time.time() + timeout
        nextPoll = 0.0
        while self.job is not None and not self.job.progress.finished:
            if time.time() > deadline:
                raise TimeoutError(f"job {self.job.id} did not finish in {timeout} s")
            if time.time() >= nextPoll:
                self.poll()
                nextPoll = time.time() + POLL_MS / 1000.0
            self.pollQueue()
            self.pumpEvents()
            time.sleep(0.05)
        self.queue.wait_idle(max(1.0, deadline - time.time()), pump=self.pumpEvents)
        self.pollQueue()
        return self.job.progress if self.job is not None else None

    def updatePlot(self, progress):
        """Live curves in a Slicer plot: loss and validation Dice against iteration."""
        self.plotNodes = plots.update_curves(self.scene, self.plotNodes, progress, show=self.showChart)

    # ----- AutoML --------------------------------------------------------------------------------
    def startAutoML(self, settings, pairs, trials, workers):
        try:
            settings.validate()
            model = next((m for m in self.trainableModels() if m.name == settings.model), None)
            if model is None:
                raise ConfigError("pick the model whose training settings to search")
            jobs.check_enough_cases(len(pairs), model.kind, settings.val_split)
            root = os.path.join(self.workRoot, time.strftime("automl-%Y%m%d-%H%M%S"))
            cases = self.exportCases(pairs, os.path.join(root, "data"))
            datalist = jobs.write_datalist(cases, os.path.join(root, "data"))
            bundle, _registry = self.bundleAndRegistry(model)
            self.automlDir = os.path.join(root, "study")
            cmd = automl.AutoMLSettings(str(bundle), str(datalist), self.automlDir, trials, workers).validate().command()
            os.makedirs(self.automlDir, exist_ok=True)
            import claraseg

            env = dict(os.environ)  # the search process imports the claraseg shipped with the extension
            env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(claraseg.__file__)),
                                                            env.get("PYTHONPATH")) if p)
            self.automlLog = os.path.join(root, "automl.log")
            with open(self.automlLog, "ab") as logFile:
                self.automlProcess = subprocess.Popen(cmd, stdout=logFile, stderr=subprocess.STDOUT, cwd=root, env=env)
        except Exception as e:
            self.status(user_message(e, _("Cannot start AutoML")), "error")
            return None
        self.status(_("AutoML search started ({n} trials, {w} workers)").format(n=trials, w=workers), "ok")
        self.startAutoMLPolling()
        return self.automlProcess

    def pollAutoML(self):
        rows = automl.read_trials(self.automlDir)
        summary = automl.summary_line(self.automlDir)
        self._notify("onTrialsChanged", rows, summary)
        if self.automlProcess is not None and self.automlProcess.poll() is not None:
            self.stopAutoMLPolling()
            code = self.automlProcess.returncode
            if code == 0:
                self.status(summary or _("AutoML ended"), "ok")
            else:
                self.status(_("AutoML stopped (exit code {code}): {last}").format(
                    code=code, last=automl.last_log_line(self.automlLog)), "error")

    def stopAutoML(self):
        if self.automlProcess is not None and self.automlProcess.poll() is None:
            self.automlProcess.terminate()
            self.status(_("Stopping the search; finished trials are kept and it can be resumed"), "warning")

    def applyBest(self):
        try:
            self.appliedOverrides = automl.best_overrides(self.automlDir or "")
        except Exception as e:
            self.status(user_message(e, _("Apply best")), "error")
            return
        self.status(_("Best settings applied to the next fine-tune job: {o}").format(o=self.appliedOverrides), "ok")
