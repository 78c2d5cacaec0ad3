"""Pure-Python helpers of the ClaraTrainModule module: importable and tested without Slicer.

``jobs`` (settings -> job overrides, datalists, local and server jobs), ``progress`` (events -> state,
curves, time left), ``automl`` (the AutoML tab's process and report files), ``federated`` (this scene as
a federated site's datalist, a federated job's rounds from its events; its panel needs Slicer). ``export`` (the scene's
volumes and segmentations as training pairs) and ``trainer`` (the panel's logic) need Slicer.
"""

import importlib.util
import os
import sys

# Run from a source checkout (module folders added in Application Settings > Modules, or
# --additional-module-paths): claraseg sits beside the module folders; a built extension has it in
# qt-scripted-modules, already on sys.path.
if importlib.util.find_spec("claraseg") is None:
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isdir(os.path.join(_root, "claraseg")):
        sys.path.insert(0, _root)
