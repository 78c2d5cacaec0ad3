"""The Slicer self-tests' expectations, checked on the real engine with the shipped default models.

ClaraAnnotate's self-tests (run only where Slicer exists) click the sample CT's spleen following the
click protocol, run its six extreme points and auto-segment it, then assert a Dice. The same calls with
the same points go here through ``LocalBackend``, the backend the self-tests use in local mode, so the
thresholds in ``ClaraAnnotateLib.selftest`` are known to hold for the weights in the tree.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ClaraAnnotateLib import selftest

from claraseg.engine.backend import LocalBackend
from claraseg.evaluate.protocol import dice
from claraseg.io import read_image


@pytest.fixture(scope="module")
def sample(data_dir):
    folder = data_dir / "ct_abdomen_3mm"
    image = read_image(folder / "image.nii.gz")
    labels = read_image(folder / "label.nii.gz", label=True).array
    names = json.loads((folder / "labels.json").read_text())
    backend = LocalBackend(device="cpu", idle_timeout=None)
    session = backend.open_session(image)
    yield session, labels, names
    session.close()
    backend.close()


def _structure(labels, names, name):
    value = selftest.label_value(names, name)
    assert value is not None, f"{name} is not in the sample CT's labels.json"
    return labels == value


def test_click_selftest_expectation(sample):
    session, labels, names = sample
    truth = _structure(labels, names, selftest.SELFTEST_STRUCTURE)
    current = np.zeros_like(truth)
    dices = []
    for _ in range(selftest.SELFTEST_CLICKS):
        click = selftest.protocol_click(current, truth)
        if click is None:
            break
        ijk, foreground = click
        delta = session.click("deepgrow3d", foreground=[ijk] if foreground else [],
                              background=[] if foreground else [ijk], object_id="selftest")
        delta.paste(current)
        dices.append(dice(current, truth))
    print("click self-test Dice per click:", [round(d, 3) for d in dices])
    assert dices[-1] > selftest.CLICK_MIN_DICE


def test_extreme_points_selftest_expectation(sample):
    session, labels, names = sample
    truth = _structure(labels, names, selftest.SELFTEST_STRUCTURE)
    current = np.zeros_like(truth)
    session.extreme_points("dextr3d", selftest.extreme_points_ijk(truth), object_id="extreme").paste(current)
    d = dice(current, truth)
    print(f"extreme-points self-test Dice: {d:.3f}")
    assert d > selftest.EXTREME_MIN_DICE


def test_auto_segment_selftest_expectation(sample):
    session, labels, names = sample
    delta = session.auto_segment("segmentation")
    full = delta.to_full()
    checked = 0
    for value, name in delta.labels.items():
        mask = full == value
        truth_value = selftest.label_value(names, name)
        if truth_value is None:
            continue
        d = dice(mask, labels == truth_value)
        print(f"auto-segment self-test Dice {name}: {d:.3f}")
        assert d > selftest.AUTO_MIN_DICE, name
        checked += 1
    assert checked > 0
