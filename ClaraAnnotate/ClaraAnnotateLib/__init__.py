"""Pure-Python helpers of the ClaraAnnotate module: importable and tested without Slicer.

``geometry`` (matrices, voxel indices, slice axes), ``segments`` (label <-> segment, object masks),
``settings`` (backend choice, server history), ``worker`` (background task queue), ``annotator``
(backend + session controller), ``install`` (local-mode requirements). ``nodes`` is the one module
that needs Slicer: the MRML side of the conversions, imported only inside Slicer.
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
