"""Pure-Python helpers of the ClaraTrainModule module: importable and tested without Slicer.

``jobs`` (settings -> job overrides, datalists, local and server jobs), ``progress`` (events -> state,
curves, time left), ``automl`` (the AutoML tab's process and report files). ``export`` is the one module
that needs Slicer: it writes the scene's volumes and segmentations as training pairs.
"""
