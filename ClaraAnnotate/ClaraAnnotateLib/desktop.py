"""What only Slicer's desktop application adds to the annotation tools: a Qt timer that delivers the
worker's results, the status bar, Qt event pumping while waiting, the install dialog, and the undo step
in the module panel's embedded Segment Editor (its Undo button; the only undo before Slicer 5.10)."""

import logging

import qt
import slicer

from . import install
from .i18n import tr as _
from .interaction import InteractionLogic

log = logging.getLogger(__name__)


class DesktopInteractionLogic(InteractionLogic):
    """Mixed into ``ClaraAnnotateLogic``; ``getParameterNode()`` comes from there."""

    def __init__(self) -> None:
        super().__init__()
        self._timer = qt.QTimer()
        self._timer.setInterval(30)
        self._timer.connect("timeout()", self.poll)

    def startPolling(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def stopPolling(self) -> None:
        self._timer.stop()

    def pumpEvents(self) -> None:
        slicer.app.processEvents()

    def status(self, message: str, level: str = "info") -> None:
        super().status(message, level)
        slicer.util.showStatusMessage(message, 5000)

    def saveStateForUndo(self, editorNode=None) -> None:
        """The Qt-free step (Slicer >= 5.10), and a step in the module panel's embedded Segment Editor
        when the result is for its editor node, so that its Undo button and Ctrl+Z revert it."""
        super().saveStateForUndo(editorNode)
        try:
            editor = slicer.util.getModuleWidget(self.moduleName).ui.embeddedSegmentEditorWidget
        except Exception as e:  # no panel (e.g. a script without the module's GUI)
            log.info("no module panel to record the undo step in: %s", e)
            return
        if editorNode is None or editorNode is editor.mrmlSegmentEditorNode():
            editor.saveStateForUndo()

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
