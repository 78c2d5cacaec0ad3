"""The web app's tests import ClaraAnnotateWeb from the checkout and their helpers from this folder."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parents[1]), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)
