"""The 'Clara' Segment Editor effect: the ClaraAnnotate tools without leaving the editor.

Left-click in a slice view places a foreground point, a background point or an extreme point (the
mode chosen in the options); each foreground/background point updates the selected segment at once,
with the 2D model's slice taken from the view clicked in. The work is done by the shared
ClaraAnnotateLogic (backend, worker thread, undo) and the decisions by ClaraAnnotateLib.effect (Qt-free,
tested on slicer-core): this file reads the effect's widgets and forwards.
"""

import os

import qt
import slicer
import vtk
from ClaraAnnotateLib import effect
from SegmentEditorEffects.AbstractScriptedSegmentEditorEffect import AbstractScriptedSegmentEditorEffect

UI_FILE = os.path.join(os.path.dirname(__file__), "..", "Resources", "UI", "SegmentEditorClara.ui")
ICON_FILE = os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons", "ClaraAnnotate.png")


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Clara"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = False
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.ui = None
        self._logic = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        return qt.QIcon(ICON_FILE) if os.path.exists(ICON_FILE) else qt.QIcon()

    def helpText(self):
        return ("<html>AI segmentation with Clara models (connect in the <b>Clara Annotate</b> module).<br>"
                "<b>Foreground/Background</b>: left-click in a slice view; the segment updates after each click. "
                "<b>Extreme points</b>: click the six outermost points of the structure, then <i>Run</i>. "
                "<b>Auto-segment</b>: one segment per model label.</html>")

    @property
    def logic(self):
        if self._logic is None:
            from ClaraAnnotate import ClaraAnnotateLogic

            self._logic = ClaraAnnotateLogic.shared()
            self._logic.addListener(self)
        return self._logic

    def setupOptionsFrame(self):
        uiWidget = slicer.util.loadUI(UI_FILE)
        self.scriptedEffect.addOptionsWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.ui.foregroundModeRadioButton.checked = True
        self.ui.runExtremeButton.connect("clicked()", self.onRunExtremePoints)
        self.ui.autoSegmentButton.connect("clicked()", self.onAutoSegment)
        self.ui.refineButton.connect("clicked()", lambda: self.logic.refineFromSegment(self._editorNode()))
        self.ui.undoButton.connect("clicked()", lambda: self.logic.undoObject(self._saveUndo, self._editorNode()))
        self.ui.clearButton.connect("clicked()", lambda: self.logic.clearObject(self._saveUndo, self._editorNode()))
        self.ui.cancelButton.connect("clicked()", lambda: self.logic.cancel())
        self.ui.connectButton.connect("clicked()", self.onConnect)

    def cleanup(self):
        if self._logic is not None:
            self._logic.removeListener(self)

    def activate(self):
        self.logic.ensurePointLists(self.logic.getParameterNode())
        self.onConnectionChanged(self.logic.connectionInfo)
        self.onPointsChanged()

    def deactivate(self):
        pass

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor if slicer.util.mainWindow() else qt.QCursor()

    def _saveUndo(self):
        self.scriptedEffect.saveStateForUndo()

    def _editorNode(self):
        """The segment editor node of the editor this effect is in (not necessarily the Segment Editor
        module's: any module can embed an editor with its own node)."""
        return self.scriptedEffect.parameterSetNode()

    def _mode(self):
        return effect.mode_from_buttons(self.ui.backgroundModeRadioButton.checked, self.ui.extremeModeRadioButton.checked)

    # ----- clicks --------------------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if not effect.takes_event(viewWidget.className() == "qMRMLSliceWidget", eventId == vtk.vtkCommand.LeftButtonPressEvent,
                                  callerInteractor.GetShiftKey(), callerInteractor.GetControlKey(),
                                  callerInteractor.GetAltKey()):
            return False
        xy = callerInteractor.GetEventPosition()
        sliceNode = viewWidget.mrmlSliceNode()
        ras = effect.xy_to_ras(xy, sliceNode) or self.xyToRas(xy, viewWidget)
        effect.place_click(self.logic, self._mode(), ras, sliceNode, self._saveUndo, self._editorNode())
        return True

    def onRunExtremePoints(self):
        self.logic.runExtremePoints(saveUndo=self._saveUndo, editorNode=self._editorNode())

    def onAutoSegment(self):
        self.logic.runAutoSegment(saveUndo=self._saveUndo, editorNode=self._editorNode())

    def onConnect(self):
        from ClaraAnnotateLib.settings import BackendSettings

        self.logic.connect(BackendSettings.load(qt.QSettings()))

    # ----- listener callbacks from the shared logic ----------------------------------------------
    def onStatus(self, message, level="info"):
        if self.ui:
            self.ui.statusLabel.text = message

    def onBusyChanged(self, busy, label):
        if self.ui:
            self.ui.cancelButton.enabled = busy
            self.ui.progressBar.visible = busy

    def onProgress(self, fraction, message):
        if self.ui and fraction is not None:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.value = int(100 * fraction)

    def onConnectionChanged(self, info):
        if not self.ui:
            return
        self.ui.connectionLabel.text = effect.connection_text(info)
        for w in (self.ui.runExtremeButton, self.ui.autoSegmentButton, self.ui.refineButton, self.ui.undoButton,
                  self.ui.clearButton):
            w.enabled = info is not None
        if info is not None:
            self.onModelsChanged(info.models)

    def onModelsChanged(self, models):
        if self.ui:
            self.ui.modelsLabel.text = effect.models_text(self.logic.getParameterNode())

    def onPointsChanged(self):
        if not self.ui:
            return
        n = effect.defined_points(self.logic.getParameterNode().extremePoints)
        self.ui.extremePointsLabel.text = effect.extreme_points_text(n)
        self.ui.runExtremeButton.enabled = effect.can_run_extreme_points(n, self.logic.connectionInfo is not None)
