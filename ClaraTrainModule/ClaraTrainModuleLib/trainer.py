"""The Slicer side of the fine-tuning panel: export the scene's data, start and follow jobs, plot curves,
run the AutoML search process. Needs Slicer (imported only inside it); job control and network calls
run on a :class:`~ClaraAnnotateLib.worker.TaskQueue`, MRML and Qt are touched on the main thread only.
"""

import logging
import os
import subprocess
import tempfile
import time

import qt
import slicer
from ClaraAnnotateLib import nodes
from ClaraAnnotateLib.annotator import user_message
from ClaraAnnotateLib.settings import BackendSettings
from ClaraAnnotateLib.worker import TaskQueue
from slicer.i18n import tr as _

from claraseg.errors import ConfigError
from claraseg.io import read_image

from . import automl, jobs, plots

log = logging.getLogger(__name__)
POLL_MS = 1000


class TrainLogic:
    """Mixed into ``ClaraTrainModuleLogic``. Without a widget it is driven from scripts and the self-test;
    ``listener`` (the widget) receives ``onStatus``, ``onJobChanged`` and ``onTrialsChanged``."""

    def __init__(self) -> None:
        super().__init__()  # cooperative: ScriptedLoadableModuleLogic.__init__ reaches here through super()
        self.listener = None
        self.job = None
        self.automlProcess = None
        self.automlDir = None
        self.appliedOverrides = {}
        self.plotNodes = {}
        self.workRoot = os.path.join(slicer.app.temporaryPath, "ClaraTrain")
        self.queue = TaskQueue("ClaraTrainWorker")
        self._polling = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self.poll)
        self._queueTimer = qt.QTimer()
        self._queueTimer.setInterval(50)
        self._queueTimer.connect("timeout()", self._pollQueue)

    def _notify(self, method, *args):
        fn = getattr(self.listener, method, None) if self.listener else None
        if fn is not None:
            fn(*args)

    def status(self, message, level="info"):
        (log.warning if level in ("error", "warning") else log.info)(message)
        self._notify("onStatus", message, level)

    def annotateLogic(self):
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
                token = BackendSettings.load(qt.QSettings()).token or None
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
                with slicer.util.WaitCursor():
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
            self._timer.start()

        return self.submit(_("Starting the job"), create, started)

    def bundleAndRegistry(self, model):
        """The model's bundle folder and the folder the local backend serves (new versions go there)."""
        registry = getattr(self.annotateLogic().controller.backend, "registry", None)
        publishDir = getattr(registry, "publish_dir", None)
        return jobs.bundle_for(model, publishDir), publishDir

    def submit(self, label, fn, onDone=None):
        """Run job and network calls off the GUI thread; results come back through :meth:`_pollQueue`."""
        task = self.queue.submit(fn, label=label, on_done=onDone,
                                 on_error=lambda e: self.status(user_message(e, label), "error"))
        if not self._queueTimer.isActive():
            self._queueTimer.start()
        return task

    def _pollQueue(self):
        self.queue.poll()
        if not self.queue.busy:
            self.queue.poll()
            self._queueTimer.stop()

    def poll(self):
        """Timer tick: read the job's new events (off the GUI thread), then update the panel and the plot."""
        if self.job is None:
            self._timer.stop()
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
                self._timer.stop()
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
            self._timer.start()
            self._notify("onJobChanged", job.progress)

        self.submit(_("Resuming the job"), lambda tok: job.resume(), resumed)

    def wait(self, timeout=900.0):
        """Pump events until the job ends (scripts and self-tests)."""
        deadline = time.time() + timeout
        while self.job is not None and not self.job.progress.finished:
            if time.time() > deadline:
                raise TimeoutError(f"job {self.job.id} did not finish in {timeout} s")
            slicer.app.processEvents()
            time.sleep(0.05)
        return self.job.progress

    def updatePlot(self, progress):
        """Live curves in a Slicer plot: loss and validation Dice against iteration."""
        self.plotNodes = plots.update_curves(slicer.mrmlScene, self.plotNodes, progress,
                                             show=slicer.modules.plots.logic().ShowChartInLayout)

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
        self._automlTimer = qt.QTimer()
        self._automlTimer.setInterval(2 * POLL_MS)
        self._automlTimer.connect("timeout()", self.pollAutoML)
        self._automlTimer.start()
        return self.automlProcess

    def pollAutoML(self):
        rows = automl.read_trials(self.automlDir)
        summary = automl.summary_line(self.automlDir)
        self._notify("onTrialsChanged", rows, summary)
        if self.automlProcess is not None and self.automlProcess.poll() is not None:
            self._automlTimer.stop()
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
