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
