"""ClaraAnnotate: segment by clicks, extreme points or one button, with a local or remote Clara backend.

Module, Widget, Logic and Test classes only (the Qt side); everything else lives in ClaraAnnotateLib:
the tools on the MRML scene in ``interaction`` (Qt-free, tested on slicer-core), the MRML conversions in
``nodes``, the self-tests' bodies in ``selftest``, the arithmetic, threading and backend handling in the
pure modules.
"""

import logging
import os

import qt
import slicer
from ClaraAnnotateLib import annotator, selftest
from ClaraAnnotateLib.desktop import DesktopInteractionLogic
from ClaraAnnotateLib.settings import BackendSettings
from slicer import vtkMRMLMarkupsFiducialNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

log = logging.getLogger(__name__)
EFFECT_SOURCE = os.path.join(os.path.dirname(__file__), "SegmentEditorClaraLib", "SegmentEditorEffect.py")


class ClaraAnnotate(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Clara Annotate")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "SegmentEditor", "Markups"]
        self.parent.contributors = ["Clara for 3D Slicer contributors"]
        self.parent.helpText = _(
            "Segment structures with AI models: foreground/background clicks (DeepGrow 2D/3D), six or more "
            "extreme points (DEXTR3D) or automatic segmentation. Models run in Slicer (Local) or on a Clara "
            "annotation server (Remote). Also available as the 'Clara' effect of the Segment Editor.")
        self.parent.acknowledgementText = _(
            "Built on MONAI and 3D Slicer. Interaction design follows NVIDIA Clara AIAA and MONAI Label.")
        slicer.app.connect("startupCompleted()", registerEditorEffect)


def registerEditorEffect():
    """Offer the tools inside the Segment Editor as the 'Clara' effect."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(EFFECT_SOURCE.replace("\\", "/"))
    instance.self().register()


@parameterNodeWrapper
class ClaraAnnotateParameterNode:
    """Click point lists and tool choices, saved with the scene."""

    foregroundPoints: vtkMRMLMarkupsFiducialNode
    backgroundPoints: vtkMRMLMarkupsFiducialNode
    extremePoints: vtkMRMLMarkupsFiducialNode
    clickModel: str = ""
    extremeModel: str = ""
    autoModel: str = ""


class ClaraAnnotateWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGui = False

    # ----- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ClaraAnnotate.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ClaraAnnotateLogic.shared()

        editor = self.ui.embeddedSegmentEditorWidget
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        editor.setMaximumNumberOfUndoStates(10)
        for widget in (self.ui.foregroundPlaceWidget, self.ui.backgroundPlaceWidget, self.ui.extremePlaceWidget):
            widget.setMRMLScene(slicer.mrmlScene)
            widget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
            widget.buttonsVisible = False
            widget.placeButton().show()
            widget.deleteButton().show()

        settings = BackendSettings.load(qt.QSettings())
        self.ui.remoteRadioButton.checked = settings.mode == "remote"
        self.ui.localRadioButton.checked = settings.mode != "remote"
        self.ui.serverComboBox.clear()
        self.ui.serverComboBox.addItems(settings.history or [settings.url])
        self.ui.serverComboBox.setEditText(settings.url)
        self.ui.tokenLineEdit.text = settings.token
        self.ui.rememberTokenCheckBox.checked = settings.remember_token

        self.ui.localRadioButton.connect("toggled(bool)", self.updateBackendGui)
        self.ui.connectButton.connect("clicked()", self.onConnect)
        self.ui.installButton.connect("clicked()", self.onInstall)
        self.ui.refreshModelsButton.connect("clicked()", self.logic.refreshModels)
        self.ui.runExtremeButton.connect("clicked()", self.onRunExtremePoints)
        self.ui.autoSegmentButton.connect("clicked()", self.onAutoSegment)
        self.ui.refineButton.connect("clicked()", self.onRefine)
        self.ui.undoButton.connect("clicked()", self.onUndo)
        self.ui.clearButton.connect("clicked()", self.onClear)
        self.ui.cancelButton.connect("clicked()", self.logic.cancel)
        self.ui.modelsTreeWidget.connect("itemClicked(QTreeWidgetItem*,int)", self.onModelItemClicked)
        for combo, (field, _kinds) in zip(self._modelCombos(), annotator.TOOL_FIELDS):
            combo.connect("currentIndexChanged(int)", lambda _i, c=combo, f=field: self.onModelChosen(c, f))

        self.logic.addListener(self)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateBackendGui()
        self.onConnectionChanged(self.logic.connectionInfo)
        self.onBusyChanged(False, "")

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.removeListener(self)

    def enter(self) -> None:
        self.initializeParameterNode()
        self.ui.embeddedSegmentEditorWidget.installKeyboardShortcuts()
        self.ui.embeddedSegmentEditorWidget.updateWidgetFromMRML()

    def exit(self) -> None:
        self.ui.embeddedSegmentEditorWidget.setActiveEffect(None)
        self.ui.embeddedSegmentEditorWidget.uninstallKeyboardShortcuts()
        # Else this editor keeps observing the views alongside the Segment Editor module's own editor.
        self.ui.embeddedSegmentEditorWidget.removeViewObservations()
        for widget in (self.ui.foregroundPlaceWidget, self.ui.backgroundPlaceWidget, self.ui.extremePlaceWidget):
            widget.setPlaceModeEnabled(False)

    def onSceneStartClose(self, caller, event) -> None:
        self._parameterNode = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self._parameterNode = self.logic.getParameterNode()
        pn = self._parameterNode
        self.logic.ensurePointLists(pn)
        self.ui.foregroundPlaceWidget.setCurrentNode(pn.foregroundPoints)
        self.ui.backgroundPlaceWidget.setCurrentNode(pn.backgroundPoints)
        self.ui.extremePlaceWidget.setCurrentNode(pn.extremePoints)
        self.onPointsChanged()

    # ----- backend -------------------------------------------------------------------------------
    def currentSettings(self) -> BackendSettings:
        s = BackendSettings.load(qt.QSettings())
        s.mode = "remote" if self.ui.remoteRadioButton.checked else "local"
        s.url = self.ui.serverComboBox.currentText.strip()
        s.token = self.ui.tokenLineEdit.text.strip()
        s.remember_token = self.ui.rememberTokenCheckBox.checked
        return s

    def updateBackendGui(self, _checked=None) -> None:
        remote = self.ui.remoteRadioButton.checked
        for w in (self.ui.serverComboBox, self.ui.tokenLineEdit, self.ui.rememberTokenCheckBox):
            w.enabled = remote
        self.ui.installButton.visible = not remote

    def onConnect(self) -> None:
        try:
            settings = self.currentSettings().validate()
            settings.save(qt.QSettings())
        except Exception as e:
            self.onStatus(annotator.user_message(e, _("Cannot connect")), "error")
            return
        self.ui.serverComboBox.clear()
        self.ui.serverComboBox.addItems(settings.history or [settings.url])
        self.ui.serverComboBox.setEditText(settings.url)
        self.logic.connect(settings)

    def onInstall(self) -> None:
        self.logic.installLocalRequirements(confirm=True)

    # ----- listener callbacks (main thread) ------------------------------------------------------
    def onStatus(self, message: str, level: str = "info") -> None:
        self.ui.statusLabel.text = message
        self.ui.statusLabel.setStyleSheet(annotator.status_style(level))

    def onBusyChanged(self, busy: bool, label: str) -> None:
        self.ui.progressBar.visible = busy
        self.ui.cancelButton.enabled = busy
        if busy:
            self.ui.progressBar.setRange(0, 0)
            self.ui.progressBar.setFormat(label)

    def onProgress(self, fraction, message: str) -> None:
        if fraction is None:
            self.ui.progressBar.setRange(0, 0)
        else:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.value = int(100 * fraction)
        if message:
            self.ui.progressBar.setFormat(message)

    def onConnectionChanged(self, info) -> None:
        if info is None:
            self.ui.connectionStatusLabel.text = _("Not connected")
            self.ui.toolsCollapsibleButton.enabled = False
            return
        self.ui.connectionStatusLabel.text = info.summary
        self.ui.toolsCollapsibleButton.enabled = True
        self.onModelsChanged(info.models)

    def onModelsChanged(self, models) -> None:
        self._updatingGui = True
        try:
            tree = self.ui.modelsTreeWidget
            tree.clear()
            for kind, ms in annotator.group_models(models).items():
                top = qt.QTreeWidgetItem([annotator.KIND_TITLES.get(kind, kind), ""])
                tree.addTopLevelItem(top)
                for m in ms:
                    item = qt.QTreeWidgetItem([m.name, f"v{m.version} {annotator.model_scores(m)}".strip()])
                    item.setToolTip(0, m.description or m.name)
                    item.setData(0, qt.Qt.UserRole, m.name)
                    top.addChild(item)
                top.setExpanded(True)
            pn = self._parameterNode
            for (field, kinds), combo in zip(annotator.TOOL_FIELDS, self._modelCombos()):
                names, chosen = annotator.choose_model(models, kinds, getattr(pn, field) if pn else "")
                if pn:
                    setattr(pn, field, chosen)
                combo.clear()
                combo.addItems(names)
                combo.setCurrentIndex(names.index(chosen) if chosen in names else -1)
        finally:
            self._updatingGui = False

    def _modelCombos(self):
        return self.ui.clickModelComboBox, self.ui.extremeModelComboBox, self.ui.autoModelComboBox

    def onModelChosen(self, combo, field: str) -> None:
        if not self._updatingGui and self._parameterNode:
            setattr(self._parameterNode, field, combo.currentText)

    def onModelItemClicked(self, item, _column) -> None:
        name = item.data(0, qt.Qt.UserRole)
        if not name:
            return
        for combo in self._modelCombos():
            index = combo.findText(name)
            if index >= 0:
                combo.setCurrentIndex(index)

    def onPointsChanged(self) -> None:
        pn = self._parameterNode
        n = pn.extremePoints.GetNumberOfDefinedControlPoints() if pn and pn.extremePoints else 0
        self.ui.extremePointsLabel.text = annotator.points_text(n)
        self.ui.runExtremeButton.enabled = n >= 6

    # ----- tools ---------------------------------------------------------------------------------
    def onRunExtremePoints(self) -> None:
        self.logic.runExtremePoints()

    def onAutoSegment(self) -> None:
        self.logic.runAutoSegment()

    def onRefine(self) -> None:
        self.logic.refineFromSegment()

    def onUndo(self) -> None:
        self.logic.undoObject()

    def onClear(self) -> None:
        self.logic.clearObject()


class ClaraAnnotateLogic(ScriptedLoadableModuleLogic, DesktopInteractionLogic):
    """The annotation tools without GUI (scripts, self-tests, the Segment Editor effect): see
    ClaraAnnotateLib.interaction. One instance serves the panel and the effect (:meth:`shared`)."""

    _shared = None

    @classmethod
    def shared(cls) -> "ClaraAnnotateLogic":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # initialises the interaction logic too (cooperative super())

    def getParameterNode(self):
        return ClaraAnnotateParameterNode(super().getParameterNode())


class ClaraAnnotateTest(ScriptedLoadableModuleTest):
    """Loads the sample CT and its labels, then runs a click, extreme points and an auto-segmentation with
    the default models and checks each result against the label (Dice): ClaraAnnotateLib.selftest, which
    pytest runs on slicer-core too. Data: ``CLARASEG_DATA`` (the folder holding ``ct_abdomen_3mm/``), else
    ``../shared/data`` beside the extension's source tree. Backend: local, or ``CLARASEG_TEST_SERVER``."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for name in ("test_ClickSpleen", "test_ExtremePointsSpleen", "test_AutoSegment", "test_ParentTransform"):
            self.setUp()
            getattr(self, name)()

    def _run(self, check):
        volume, labels, names = selftest.load_sample_ct(self, __file__, slicer.modules.volumes.logic())
        logic = selftest.connect(self, ClaraAnnotateLogic.shared(), selftest.backend_settings())
        check(self, logic, volume, labels, names)

    def test_ClickSpleen(self):
        self._run(selftest.check_click)

    def test_ExtremePointsSpleen(self):
        self._run(selftest.check_extreme_points)

    def test_AutoSegment(self):
        self._run(selftest.check_auto_segment)

    def test_ParentTransform(self):
        volume, _labels, _names = selftest.load_sample_ct(self, __file__, slicer.modules.volumes.logic())
        selftest.check_parent_transform(self, volume)
