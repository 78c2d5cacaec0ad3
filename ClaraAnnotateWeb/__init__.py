"""Clara Annotate Web: the ClaraAnnotate tools in a browser, on trame-slicer.

A thin front-end over the same MRML-side controller as the Slicer module (``ClaraAnnotateLib``): the
views, point placement and segment editor effects are Slicer's own (slicer-core rendered offscreen by
trame-slicer); trame/Vue widgets live only in this package. Needs the ``web`` extra
(``pip install 'claraseg[web]'``); ``python -m ClaraAnnotateWeb --help`` starts it.
"""

import importlib.util
import os
import sys

# ClaraAnnotateLib lives in the Slicer module's folder beside this package (a source checkout).
if importlib.util.find_spec("ClaraAnnotateLib") is None:
    _module_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ClaraAnnotate")
    if os.path.isdir(os.path.join(_module_dir, "ClaraAnnotateLib")):
        sys.path.insert(0, _module_dir)

#: What ``python -m ClaraAnnotateWeb`` needs beyond claraseg: the ``web`` extra.
WEB_REQUIREMENTS = ("trame_slicer", "trame", "trame_vuetify", "slicer")


def missing_requirements() -> list:
    """The modules of the ``web`` extra that cannot be imported (empty when the web app can run)."""
    return [m for m in WEB_REQUIREMENTS if importlib.util.find_spec(m) is None]
