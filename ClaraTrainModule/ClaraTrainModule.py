"""ClaraTrainModule: fine-tune the Clara models on the segmentations just drawn, and search settings (AutoML).

Module, Widget, Logic and Test classes only. Job settings, event parsing and the AutoML report reading
live in ClaraTrainModuleLib (tested without Slicer); the job itself runs in its own process
(``claraseg.train``) or on the annotation server, followed by polling its events with a QTimer.
"""

import logging

import qt
import slicer
from ClaraAnnotateLib.annotator import status_style, user_message
from ClaraAnnotateLib.settings import BackendSettings
from ClaraTrainModuleLib import automl, jobs
from ClaraTrainModuleLib.desktop import DesktopTrainLogic
from ClaraTrainModuleLib.federated import FederatedPanel
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

log = logging.getLogger(__name__)


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
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        available, why = automl.automl_available()
        self.ui.automlUnavailableLabel.text = why
        self.ui.automlUnavailableLabel.visible = not available
        self.ui.automlSettingsWidget.enabled = available

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *a: self.refreshCases())
        self.refreshCases()
        self.refreshModels()
        self.onWhereChanged(0)
        self.onJobChanged(None)
        self.federated = FederatedPanel(self.layout, self.selectedPairs)  # export as a federated site, follow a job

    def cleanup(self) -> None:
        self.removeObservers()
        if getattr(self, "federated", None):
            self.federated.stop()
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
        self._pairs = export.segmentation_pairs(slicer.mrmlScene)
        for row, (volumeText, segText) in enumerate(export.case_rows(self._pairs)):
            table.insertRow(row)
            item = qt.QTableWidgetItem(volumeText)
            item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
            item.setCheckState(qt.Qt.Checked)
            table.setItem(row, 0, item)
            table.setItem(row, 1, qt.QTableWidgetItem(segText))
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

    def onModelChanged(self, _index=None) -> None:
        """Show what the AutoML tab would search for the chosen model."""
        model = next((m for m in self.logic.trainableModels() if m.name == self.ui.modelComboBox.currentData), None)
        if model is None or not self.ui.automlSettingsWidget.enabled:
            return
        try:
            bundle, _registry = self.logic.bundleAndRegistry(model)
            lines = automl.describe_search_space(bundle)
            self.ui.searchSpaceLabel.text = _("Search space of {model}:").format(model=model.name) + "\n" + "\n".join(lines)
        except Exception as e:
            self.ui.searchSpaceLabel.text = user_message(e)

    def onWhereChanged(self, index) -> None:
        self.ui.datastoreGroupBox.visible = index == 1

    def selectedPairs(self):
        table = self.ui.casesTableWidget
        return [p for row, p in enumerate(self._pairs) if table.item(row, 0).checkState() == qt.Qt.Checked]

    def selectedDatastoreImages(self):
        w = self.ui.datastoreListWidget
        return [w.item(i).text() for i in range(w.count) if w.item(i).checkState() == qt.Qt.Checked]

    def currentSettings(self) -> jobs.FineTuneSettings:
        ui = self.ui
        return jobs.settings_from_panel(
            self.logic.trainableModels(), ui.modelComboBox.currentData, iterations=ui.iterationsSpinBox.value,
            epochs=ui.epochsSpinBox.value, learning_rate=ui.learningRateSpinBox.value, val_split=ui.valSplitSpinBox.value,
            amp=ui.ampCheckBox.checked, smart_cache=ui.smartCacheCheckBox.checked, device=ui.deviceComboBox.currentText,
            on_server=ui.whereComboBox.currentIndex == 1, extra=self.logic.appliedOverrides)

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
        self.ui.statusLabel.setStyleSheet(status_style(level))

    def onJobChanged(self, progress) -> None:
        panel = progress.panel() if progress is not None else None
        self.ui.startButton.enabled = not (panel and panel["running"])
        self.ui.stopButton.enabled = bool(panel and panel["running"])
        self.ui.resumeButton.enabled = bool(panel and panel["resumable"])
        self.ui.progressBar.value = panel["percent"] if panel else 0
        if panel:
            self.ui.iterationLabel.text = panel["iteration"]
            self.ui.lossLabel.text = panel["loss"]
            self.ui.diceLabel.text = panel["dice"]
            self.ui.etaLabel.text = panel["eta"]
            self.onStatus(panel["status"], panel["level"])

    def onTrialsChanged(self, rows, summary: str) -> None:
        header, body = automl.table(rows)
        t = self.ui.trialsTableWidget
        t.setColumnCount(len(header))
        t.setHorizontalHeaderLabels(header)
        t.setRowCount(len(body))
        for r, cells in enumerate(body):
            for c, text in enumerate(cells):
                t.setItem(r, c, qt.QTableWidgetItem(text))
        self.ui.bestLabel.text = automl.best_text(rows, summary)
        self.ui.applyBestButton.enabled = bool(summary)


class ClaraTrainModuleLogic(ScriptedLoadableModuleLogic, DesktopTrainLogic):
    """Starts, follows, stops and resumes fine-tune jobs and AutoML searches: see ClaraTrainModuleLib.trainer."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # initialises the train logic too (cooperative super())


class ClaraTrainModuleTest(ScriptedLoadableModuleTest):
    """Draws a spleen segment from the sample CT's label, runs a few-iteration fine-tune job of the default
    DeepGrow 3D model locally, and checks that it ends with events for every iteration, a validation Dice,
    and a new model version offered in Clara Annotate. Data: ``CLARASEG_DATA`` as for ClaraAnnotateTest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_FewIterationFineTune()

    def test_FewIterationFineTune(self):

        from ClaraAnnotateLib import selftest

        from ClaraAnnotate import ClaraAnnotateLogic

        volume, labels, names = selftest.load_sample_ct(self, __file__, slicer.modules.volumes.logic())
        seg = selftest.draw_segments(volume, labels, names, {"spleen", "liver", "kidney_left", "kidney_right"})
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
