"""ClaraTrainModule: fine-tune the Clara models on the segmentations just drawn, and search settings (AutoML).

Module, Widget, Logic and Test classes only. Job settings, event parsing and the AutoML report reading
live in ClaraTrainModuleLib (tested without Slicer); the job itself runs in its own process
(``claraseg.train``) or on the annotation server, followed by polling its events with a QTimer.
"""

import logging
import os
import subprocess
import tempfile
import time
from typing import Optional

import numpy as np
import qt
import slicer
from ClaraAnnotateLib import nodes
from ClaraAnnotateLib.annotator import user_message
from ClaraAnnotateLib.settings import BackendSettings
from ClaraAnnotateLib.worker import TaskQueue
from ClaraTrainModuleLib import automl, jobs
from ClaraTrainModuleLib.progress import format_duration
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from claraseg.errors import ConfigError
from claraseg.io import read_image

log = logging.getLogger(__name__)
POLL_MS = 1000


class ClaraTrainModule(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Clara Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["ClaraAnnotate", "Plots"]
        self.parent.contributors = ["Clara for 3D Slicer contributors"]
        self.parent.helpText = _(
            "Fine-tune the DeepGrow 2D/3D, DEXTR3D or segmentation models on the volumes and segmentations in "
            "the scene (or the server's datastore), locally or on the annotation server; follow the loss and "
            "validation Dice live; the new model appears in Clara Annotate when the job ends. The AutoML tab "
            "searches training settings.")
        self.parent.acknowledgementText = _("Built on MONAI (bundles, SmartCacheDataset) and Optuna.")


class ClaraTrainModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ClaraTrainModule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ClaraTrainModuleLogic()
        self.logic.listener = self

        self.ui.deviceComboBox.addItems(list(jobs.DEVICES))
        self.ui.whereComboBox.addItems([_("Local (this computer)"), _("On the annotation server")])
        self.ui.refreshCasesButton.connect("clicked()", self.refreshCases)
        self.ui.refreshModelsButton.connect("clicked()", self.refreshModels)
        self.ui.startButton.connect("clicked()", self.onStart)
        self.ui.stopButton.connect("clicked()", self.logic.stop)
        self.ui.resumeButton.connect("clicked()", self.logic.resume)
        self.ui.whereComboBox.connect("currentIndexChanged(int)", self.onWhereChanged)
        self.ui.startAutoMLButton.connect("clicked()", self.onStartAutoML)
        self.ui.stopAutoMLButton.connect("clicked()", self.logic.stopAutoML)
        self.ui.applyBestButton.connect("clicked()", self.onApplyBest)
        available, why = automl.automl_available()
        self.ui.automlUnavailableLabel.text = why
        self.ui.automlUnavailableLabel.visible = not available
        self.ui.automlSettingsWidget.enabled = available

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *a: self.refreshCases())
        self.refreshCases()
        self.refreshModels()
        self.onWhereChanged(0)
        self.onJobChanged(None)

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.listener = None

    def enter(self) -> None:
        self.refreshCases()
        self.refreshModels()

    # ----- inputs --------------------------------------------------------------------------------
    def refreshCases(self) -> None:
        from ClaraTrainModuleLib import export

        table = self.ui.casesTableWidget
        table.setRowCount(0)
        self._pairs = export.segmentation_pairs()
        for row, (volume, seg) in enumerate(self._pairs):
            table.insertRow(row)
            item = qt.QTableWidgetItem(volume.GetName())
            item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
            item.setCheckState(qt.Qt.Checked)
            table.setItem(row, 0, item)
            table.setItem(row, 1, qt.QTableWidgetItem(
                f"{seg.GetName()} ({seg.GetSegmentation().GetNumberOfSegments()} segments)"))
        self.ui.datastoreListWidget.clear()
        for image_id in self.logic.datastoreImages():
            item = qt.QListWidgetItem(image_id)
            item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
            item.setCheckState(qt.Qt.Unchecked)
            self.ui.datastoreListWidget.addItem(item)

    def refreshModels(self) -> None:
        self.ui.modelComboBox.clear()
        for m in self.logic.trainableModels():
            self.ui.modelComboBox.addItem(f"{m.name}  ({jobs.TRAINABLE_KINDS[m.kind]})", m.name)
        if self.ui.modelComboBox.count == 0:
            self.onStatus(_("No model to adapt: connect to a backend in Clara Annotate first"), "warning")

    def onWhereChanged(self, index) -> None:
        self.ui.datastoreGroupBox.visible = index == 1

    def selectedPairs(self):
        table = self.ui.casesTableWidget
        return [p for row, p in enumerate(self._pairs) if table.item(row, 0).checkState() == qt.Qt.Checked]

    def selectedDatastoreImages(self):
        w = self.ui.datastoreListWidget
        return [w.item(i).text() for i in range(w.count) if w.item(i).checkState() == qt.Qt.Checked]

    def currentSettings(self) -> jobs.FineTuneSettings:
        name = self.ui.modelComboBox.currentData
        model = next((m for m in self.logic.trainableModels() if m.name == name), None)
        return jobs.FineTuneSettings(
            model=name or "", kind=model.kind if model else "", iterations=int(self.ui.iterationsSpinBox.value),
            epochs=int(self.ui.epochsSpinBox.value) or None, learning_rate=float(self.ui.learningRateSpinBox.value),
            val_split=float(self.ui.valSplitSpinBox.value), amp=self.ui.ampCheckBox.checked,
            smart_cache=self.ui.smartCacheCheckBox.checked, device=self.ui.deviceComboBox.currentText,
            where="server" if self.ui.whereComboBox.currentIndex == 1 else "local",
            extra=dict(self.logic.appliedOverrides))

    # ----- actions -------------------------------------------------------------------------------
    def onStart(self) -> None:
        self.logic.start(self.currentSettings(), self.selectedPairs(), self.selectedDatastoreImages())

    def onStartAutoML(self) -> None:
        self.logic.startAutoML(self.currentSettings(), self.selectedPairs(), int(self.ui.trialsSpinBox.value),
                               int(self.ui.workersSpinBox.value))

    def onApplyBest(self) -> None:
        self.logic.applyBest()
        self.ui.tabWidget.setCurrentIndex(0)

    # ----- logic callbacks -----------------------------------------------------------------------
    def onStatus(self, message: str, level: str = "info") -> None:
        self.ui.statusLabel.text = message
        self.ui.statusLabel.setStyleSheet({"error": "color: #c0392b", "warning": "color: #b9770e",
                                           "ok": "color: #1e8449"}.get(level, ""))

    def onJobChanged(self, progress) -> None:
        running = progress is not None and not progress.finished
        self.ui.startButton.enabled = not running
        self.ui.stopButton.enabled = running
        self.ui.resumeButton.enabled = progress is not None and progress.state in ("cancelled", "interrupted", "failed")
        if progress is None:
            self.ui.progressBar.value = 0
            return
        fraction = progress.fraction
        self.ui.progressBar.value = int(100 * (fraction or 0))
        self.ui.iterationLabel.text = f"{progress.iteration} / {progress.max_iterations or '?'} (epoch {progress.epoch})"
        self.ui.lossLabel.text = f"{progress.loss:.4f}" if progress.loss is not None else "-"
        self.ui.diceLabel.text = progress.dice_change()
        self.ui.etaLabel.text = format_duration(progress.time_left())
        self.onStatus(progress.summary(), "error" if progress.state == "failed" else
                      "ok" if progress.state == "completed" else "info")

    def onTrialsChanged(self, rows, summary: str) -> None:
        header, body = automl.table(rows)
        t = self.ui.trialsTableWidget
        t.setColumnCount(len(header))
        t.setHorizontalHeaderLabels(header)
        t.setRowCount(len(body))
        for r, cells in enumerate(body):
            for c, text in enumerate(cells):
                t.setItem(r, c, qt.QTableWidgetItem(text))
        best = automl.best_trial(rows)
        self.ui.bestLabel.text = summary or (f"best so far: trial {best['number']}, Dice {best['dice']:.4f}" if best else "-")
        self.ui.applyBestButton.enabled = bool(summary)


class ClaraTrainModuleLogic(ScriptedLoadableModuleLogic):
    """Starts, follows, stops and resumes jobs; MRML (export, plot) on the main thread, the job in its own
    process. Without a widget it is driven from scripts and the self-test."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
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
        from ClaraTrainModuleLib import export

        return [export.export_case(volume, seg, folder) for volume, seg in pairs]

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
        if not progress.losses:
            return
        if not self.plotNodes:
            chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "Fine-tune curves")
            chart.SetXAxisTitle("iteration")
            chart.SetYAxisTitle("loss / Dice")
            for key, color in (("loss", (0.85, 0.3, 0.2)), ("validation Dice", (0.2, 0.5, 0.9))):
                table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"Fine-tune {key}")
                series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", key)
                series.SetAndObserveTableNodeID(table.GetID())
                series.SetXColumnName("iteration")
                series.SetYColumnName(key)
                series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                series.SetColor(*color)
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
                self.plotNodes[key] = table
            self.plotNodes["chart"] = chart
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        for key, points in (("loss", progress.losses), ("validation Dice", progress.dices)):
            if points:
                arr = np.array(points, dtype=np.float64)
                slicer.util.updateTableFromArray(self.plotNodes[key], [arr[:, 0], arr[:, 1]], ["iteration", key])

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


class ClaraTrainModuleTest(ScriptedLoadableModuleTest):
    """Draws a spleen segment from the sample CT's label, runs a few-iteration fine-tune job of the default
    DeepGrow 3D model locally, and checks that it ends with events for every iteration, a validation Dice,
    and a new model version offered in Clara Annotate. Data: ``CLARASEG_DATA`` as for ClaraAnnotateTest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_FewIterationFineTune()

    def _dataDir(self) -> Optional[str]:
        here = os.path.dirname(os.path.abspath(__file__))
        for d in (os.environ.get("CLARASEG_DATA"), os.path.join(here, "..", "..", "shared", "data")):
            if d and os.path.exists(os.path.join(d, "ct_abdomen_3mm", "image.nii.gz")):
                return d
        return None

    def test_FewIterationFineTune(self):
        import json

        from ClaraAnnotate import ClaraAnnotateLogic

        d = self._dataDir()
        if d is None:
            self.skipTest("sample CT not found: set CLARASEG_DATA to the folder holding ct_abdomen_3mm/")
        folder = os.path.join(d, "ct_abdomen_3mm")
        volume = slicer.util.loadVolume(os.path.join(folder, "image.nii.gz"))
        label = slicer.util.loadLabelVolume(os.path.join(folder, "label.nii.gz"))
        with open(os.path.join(folder, "labels.json")) as f:
            names = json.load(f)
        keep = {"spleen", "liver", "kidney_left", "kidney_right"}
        labels = slicer.util.arrayFromVolume(label)
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        for value, entry in names.items():
            name = entry["name"] if isinstance(entry, dict) else entry
            if name in keep:
                segmentId = seg.GetSegmentation().AddEmptySegment("", name)
                slicer.util.updateSegmentBinaryLabelmapFromArray((labels == int(value)).astype(np.uint8), seg,
                                                                 segmentId, volume)
        annotate = ClaraAnnotateLogic.shared()
        task = annotate.wait(annotate.connect(BackendSettings(mode="local")))
        self.assertEqual(task.state, "done", f"connect failed: {task.error}")
        before = {m.name for m in annotate.connectionInfo.models}
        logic = ClaraTrainModuleLogic()
        settings = jobs.FineTuneSettings(model="deepgrow3d", kind="deepgrow3d", iterations=4, val_split=0.25,
                                         amp=False, device="cpu", extra={"training#val_interval": 2})
        self.assertIsNotNone(logic.start(settings, [(volume, seg)]), "the job did not start")
        progress = logic.wait(timeout=1200)
        self.assertEqual(progress.state, "completed", progress.summary())
        self.assertEqual(progress.iteration, 4)
        self.assertTrue(progress.losses and progress.dices, "no loss or validation events")
        annotate.wait(annotate.refreshModels())
        after = {m.name for m in annotate.connectionInfo.models}
        if progress.published:
            self.assertIn(progress.published, after - before, "the published model is not offered in Clara Annotate")
        self.delayDisplay(progress.summary())
