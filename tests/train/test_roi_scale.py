"""The training ROI's scale factor (train.json ``roi_scale_range``): the object overflows the ROI when the
factor is below 1, as a refinement ROI sized from an under-segmented mask does; bad ranges fail early."""

from __future__ import annotations

import numpy as np
import pytest

from claraseg.errors import TrainingDataError
from claraseg.guidance import object_spacing
from claraseg.models.defaults import SETTINGS as DEFAULTS
from claraseg.models.train_config import check_train_config
from claraseg.models.training import _choose_spacing
from claraseg.train.interactive import InteractiveSampled

#: An object far larger than the first click's field of view, so the two kinds of draw differ.
EXTENT = 400.0
SETTINGS = {"spacing_range_mm": [0.1, 50.0], "first_click_spacing_mm": 2.0, "fill": 0.7}


def _object_sized(train, n=400):
    """Spacings of the draws that were sized from the object (not the first click's fixed field of view)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        s = _choose_spacing(SETTINGS, EXTENT, 64, rng, train)
        out.append(s)
    first = SETTINGS["first_click_spacing_mm"]
    return np.array([s for s in out if not first * 0.7 - 1e-9 <= s <= first * 1.5 + 1e-9])


def test_default_range_keeps_the_object_inside_the_roi():
    s = _object_sized(None)
    assert len(s) > 150
    lo, hi = object_spacing(EXTENT * 0.85, 64, 0.7, (0.1, 50.0)), object_spacing(EXTENT * 1.4, 64, 0.7, (0.1, 50.0))
    assert s.min() >= lo - 1e-9 and s.max() <= hi + 1e-9


def test_low_factor_lets_the_object_overflow():
    s = _object_sized({"roi_scale_range": [0.5, 0.5]})
    expected = object_spacing(EXTENT * 0.5, 64, 0.7, (0.1, 50.0))
    assert np.allclose(s, expected)
    # The object is larger than the ROI's field of view at that spacing.
    assert 64 * expected < EXTENT


@pytest.mark.parametrize("bad", [[0, 1], [1.4, 0.5], ["a", 1], [0.5], 3, [0.5, float("inf")], "12",
                                 [0.5, 1, 2], [True, 1]])
def test_bad_roi_scale_range_is_refused(bad):
    with pytest.raises(TrainingDataError, match="roi_scale_range"):
        check_train_config({"roi_scale_range": bad})


def test_absent_roi_scale_range_is_fine():
    check_train_config({})
    check_train_config({"roi_scale_range": [0.5, 1.4]})


def test_a_fine_tune_with_a_bad_range_fails_when_its_sampler_is_built():
    with pytest.raises(TrainingDataError, match="roi_scale_range"):
        InteractiveSampled("deepgrow3d", DEFAULTS["deepgrow3d"], train={"roi_scale_range": [2, 1]})
    InteractiveSampled("deepgrow3d", DEFAULTS["deepgrow3d"], train={"roi_scale_range": [0.5, 1.4]})


@pytest.mark.parametrize("cfg", [{"box_scale_range": [1.2, 0.5]}, {"box_scale_range": "12"},
                                 {"p_correction": 1.5}, {"p_model_in_loop": -0.1}, {"p_correction": True}])
def test_bad_dextr_click_sampling_is_refused(cfg):
    key = next(iter(cfg))
    with pytest.raises(TrainingDataError, match=key):
        check_train_config(cfg)
