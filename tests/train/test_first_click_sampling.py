"""The first-click keys of train.json: how many DeepGrow samples take the first click's field of view
(``p_first_click_roi``) and start from an empty mask (``p_from_scratch``), and how strongly structure draws
favour large structures (``p_by_size``, ``by_size_power``); bad values fail before training."""

from __future__ import annotations

import numpy as np
import pytest

from claraseg.errors import TrainingDataError
from claraseg.io import Image
from claraseg.models.pretrain import check_train_overrides, train_recipe_options
from claraseg.models.sources import draw_structure
from claraseg.models.train_config import check_train_config
from claraseg.models.training import _choose_spacing, volume_from_images

SETTINGS = {"spacing_range_mm": [0.1, 50.0], "first_click_spacing_mm": 2.0, "fill": 0.7}


def _first_click_share(train, n=600):
    rng = np.random.default_rng(1)
    s = np.array([_choose_spacing(SETTINGS, 400.0, 64, rng, train) for _ in range(n)])
    return float(np.mean(s <= 2.0 * 1.5 + 1e-9))


def test_p_first_click_roi_sets_the_share_of_first_click_rois():
    assert _first_click_share({"p_first_click_roi": 0.0}) == 0.0
    assert _first_click_share({"p_first_click_roi": 1.0}) == 1.0
    default = _first_click_share(None)
    assert 0.28 < default < 0.42  # the default 0.35
    assert _first_click_share({"p_first_click_roi": 0.7}) > default + 0.2


def _volume():
    """One 'organ' of 8,000 voxels and four of 27 voxels."""
    image = np.zeros((40, 40, 40), np.float32)
    label = np.zeros((40, 40, 40), np.int16)
    label[:20, :20, :20] = 1
    for v, o in enumerate((25, 29, 33, 37), start=2):
        label[o:o + 3, o:o + 3, o:o + 3] = v
    return volume_from_images("toy", Image(image), Image(label), {"MR": {"type": "percentile", "percentiles": [0.5, 99.5]}},
                              min_voxels=20, modality="MR")


def _large_share(**kw):
    vol = _volume()
    rng = np.random.default_rng(2)
    big = max(vol.structures, key=lambda s: len(s.coords))
    draws = [draw_structure({"ct": [vol]}, rng, **kw)[1] is big for _ in range(1000)]
    return float(np.mean(draws))


def test_draws_by_size_favour_large_structures_more_with_a_higher_power():
    uniform = _large_share(p_by_size=0.0)
    sqrt = _large_share(p_by_size=1.0, by_size_power=0.5)
    linear = _large_share(p_by_size=1.0, by_size_power=1.0)
    assert 0.15 < uniform < 0.25  # one of five structures
    assert uniform < sqrt < linear
    assert linear > 0.95  # 8,000 voxels against 4 x 27


def test_a_negative_power_favours_small_structures():
    uniform = _large_share(p_by_size=0.0)
    inverse = _large_share(p_by_size=1.0, by_size_power=-0.5)
    assert inverse < 0.5 * uniform


@pytest.mark.parametrize("cfg", [{"p_first_click_roi": 1.2}, {"p_from_scratch": -0.5}, {"p_from_scratch_cut": "1"},
                                 {"p_by_size": True}, {"by_size_power": 3}, {"by_size_power": -1.5}, {"by_size_power": None},
                                 {"p_from_scratch": None}])
def test_bad_first_click_keys_are_refused(cfg):
    with pytest.raises(TrainingDataError, match=next(iter(cfg))):
        check_train_config(cfg)


def test_the_keys_are_pretrain_options_and_recorded_in_the_recipe():
    cfg = check_train_overrides({"p_first_click_roi": 0.6, "p_by_size": 0.7, "by_size_power": 1.0})
    check_train_config(cfg)
    recipe = train_recipe_options("deepgrow3d", cfg)
    for text in ("p_first_click_roi=0.6", "p_by_size=0.7", "by_size_power=1.0", "p_from_scratch=0.4",
                 "p_from_scratch_cut=0.65"):
        assert f"--train {text}" in recipe
    assert "p_first_click_roi" not in train_recipe_options("dextr3d", cfg)


def test_local_errors_change_only_patches_of_the_boundary():
    from scipy import ndimage

    from claraseg.models.click_sampling import local_errors, refine_clicks

    gt = np.zeros((48, 48, 48), np.uint8)
    gt[8:40, 8:40, 8:40] = 1
    rng = np.random.default_rng(0)
    boundary = ndimage.binary_dilation(gt, iterations=1) & ~ndimage.binary_erosion(gt, iterations=1)
    for _ in range(10):
        m = local_errors(gt, rng).astype(bool)
        wrong = m != gt.astype(bool)
        assert wrong.any()
        # within two voxels of the truth's boundary, and far from covering the whole boundary
        shell = ndimage.binary_dilation(gt, iterations=2) & ~ndimage.binary_erosion(gt, iterations=2)
        assert not (wrong & ~shell).any()
        assert (boundary & wrong).sum() < 0.5 * boundary.sum()
    # the key draws these masks in refine_clicks; at 0 the random stream is the one of earlier recipes
    a = refine_clicks(gt, gt, np.random.default_rng(3))
    b = refine_clicks(gt, gt, np.random.default_rng(3), 0.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(np.asarray(a[1] + a[2]), np.asarray(b[1] + b[2]))
    c = refine_clicks(gt, gt, np.random.default_rng(3), 1.0)
    assert not np.array_equal(a[0], c[0])


def test_p_local_errors_is_a_checked_training_key():
    check_train_config({"p_local_errors": 0.5})
    with pytest.raises(TrainingDataError, match="p_local_errors"):
        check_train_config({"p_local_errors": 1.5})
    assert "--train p_local_errors=0.4" in train_recipe_options("dextr3d", check_train_overrides({"p_local_errors": 0.4}))
