"""Sample data for the modules' self-tests (shared by ClaraAnnotate and ClaraTrainModule)."""

from __future__ import annotations

import json
import os
from typing import Optional

SAMPLE_MISSING = "sample CT not found: set CLARASEG_DATA to the folder holding ct_abdomen_3mm/"


def sample_data_dir(module_file: str) -> Optional[str]:
    """``$CLARASEG_DATA``, or ``../shared/data`` beside the checkout holding ``module_file``; None if absent."""
    here = os.path.dirname(os.path.abspath(module_file))
    for d in (os.environ.get("CLARASEG_DATA"), os.path.join(here, "..", "..", "shared", "data")):
        if d and os.path.exists(os.path.join(d, "ct_abdomen_3mm", "image.nii.gz")):
            return d
    return None


def load_sample_ct(test_case, module_file: str):
    """Load the sample CT and its label map into the scene (skipping ``test_case`` when absent).

    Returns ``(volume node, label array [k, j, i], {value: name entry})``.
    """
    import numpy as np
    import slicer

    d = sample_data_dir(module_file)
    if d is None:
        test_case.skipTest(SAMPLE_MISSING)
    folder = os.path.join(d, "ct_abdomen_3mm")
    volume = slicer.util.loadVolume(os.path.join(folder, "image.nii.gz"))
    label = slicer.util.loadLabelVolume(os.path.join(folder, "label.nii.gz"))
    with open(os.path.join(folder, "labels.json")) as f:
        names = json.load(f)
    labels = np.array(slicer.util.arrayFromVolume(label), copy=True)
    return volume, labels, names


# ----- what the self-tests do and expect (shared with the pytest that checks them on the engine) -----------
#: Clicks of the click self-test: the first at the structure's deepest point, then corrective clicks
#: placed by the click protocol of ANCHORS.md on the current error.
SELFTEST_CLICKS = 5
#: Smallest Dice each self-test accepts with the default models (tests/slicer/test_selftest_expectations.py
#: checks them on the engine, so a retrained model that falls below fails CI, not only in Slicer).
CLICK_MIN_DICE = 0.6
EXTREME_MIN_DICE = 0.7
AUTO_MIN_DICE = 0.5
#: The structure the interactive self-tests segment (held out of the interactive models' training).
SELFTEST_STRUCTURE = "spleen"


def label_value(names: dict, wanted: str) -> Optional[int]:
    """The value of the structure called ``wanted`` in a labels.json mapping (entries: name or {name})."""
    for k, v in names.items():
        if (v["name"] if isinstance(v, dict) else v) == wanted:
            return int(k)
    return None


def protocol_click(current, truth, seed: int = 42):
    """The next click ``([i, j, k], foreground)`` of the click protocol for a ``[k, j, i]`` mask pair, or
    None when they agree (an empty ``current`` gives the structure's deepest point)."""
    import numpy as np

    from claraseg.evaluate.protocol import next_click

    found = next_click(np.asarray(current, bool), np.asarray(truth, bool), np.random.default_rng(seed))
    if found is None:
        return None
    (k, j, i), foreground = found
    return [int(i), int(j), int(k)], foreground


def extreme_points_ijk(truth) -> list:
    """The six extreme points ``[i, j, k]`` of a ``[k, j, i]`` mask (ties: nearest the centroid)."""
    import numpy as np

    from claraseg.evaluate.protocol import extreme_points

    return extreme_points(np.asarray(truth, bool))
