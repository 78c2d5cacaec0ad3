"""The Slicer modules' pure-Python packages are imported from the module folders, as Slicer does."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIRS = [ROOT / "ClaraAnnotate", ROOT / "ClaraTrainModule"]
for d in MODULE_DIRS:
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
