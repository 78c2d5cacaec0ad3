"""What only Slicer's desktop application adds to the fine-tuning logic: Qt timers that follow the job,
the queue and the AutoML search, the wait cursor, the server token from the settings, the plot view."""

import os

import qt
import slicer
from ClaraAnnotateLib.settings import BackendSettings

from .trainer import POLL_MS, TrainLogic


class DesktopTrainLogic(TrainLogic):
    """Mixed into ``ClaraTrainModuleLogic``."""

    def __init__(self) -> None:
        super().__init__(workRoot=os.path.join(slicer.app.temporaryPath, "ClaraTrain"))
        self._timers = {}
        for name, interval, slot in (("job", POLL_MS, self.poll), ("queue", 50, self.pollQueue),
                                     ("automl", 2 * POLL_MS, self.pollAutoML)):
            timer = qt.QTimer()
            timer.setInterval(interval)
            timer.connect("timeout()", slot)
            self._timers[name] = timer

    def _start(self, name):
        if not self._timers[name].isActive():
            self._timers[name].start()

    def startJobPolling(self):
        self._start("job")

    def stopJobPolling(self):
        self._timers["job"].stop()

    def startQueuePolling(self):
        self._start("queue")

    def stopQueuePolling(self):
        self._timers["queue"].stop()

    def startAutoMLPolling(self):
        self._start("automl")

    def stopAutoMLPolling(self):
        self._timers["automl"].stop()

    def pumpEvents(self):
        slicer.app.processEvents()

    def busyCursor(self):
        return slicer.util.WaitCursor()

    def serverToken(self):
        return BackendSettings.load(qt.QSettings()).token or None

    def showChart(self, chart):
        slicer.modules.plots.logic().ShowChartInLayout(chart)
