"""``keep_mask_detail``: a click model whose ROI is coarser than the image applies only its result's
changes, so the parts of the object it did not change keep their source-resolution detail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from claraseg.engine.masks import BoxMask
from claraseg.engine.runners import Volume, _paste_roi, run_deepgrow, run_dextr
from claraseg.errors import ConfigError
from claraseg.guidance import square_roi
from claraseg.guidance.roi import sample_roi
from claraseg.models.bundle import read_bundle
from claraseg.models.testing import make_tiny_bundle

SIZE = (40, 40, 40)  # i, j, k


def _thin_object(half: int = 6) -> np.ndarray:
    """A block (1 mm voxels) with a one-voxel-thick fin along i: the fin vanishes on a coarse ROI grid."""
    m = np.zeros(SIZE[::-1], np.uint8)
    m[20 - half:20 + half, 20 - half:20 + half, 14:26] = 1
    m[20, 20, 3:14] = 1
    return m


def _volume(mask: np.ndarray) -> Volume:
    return Volume(mask.astype(np.float32) * 100.0, np.ones(3), lambda t: t / 100.0)


class _EchoMask(torch.nn.Module):
    """A 'network' that answers with the mask channel it is given (changes nothing), plus an added
    block where ``add`` is set, in ROI voxels [k, j, i] slices."""

    def __init__(self, channel: int, add: tuple[slice, ...] | None = None):
        super().__init__()
        self.channel, self.add = channel, add

    def forward(self, x):
        out = x[:, self.channel:self.channel + 1].clone()
        if self.add is not None:
            out[(slice(None), slice(None), *self.add)] = 1.0
        return 20.0 * (out - 0.5)


def test_paste_keeps_source_detail_where_the_result_does_not_change():
    full = _thin_object()
    mask = BoxMask(SIZE, np.zeros(3, np.int64), full)
    roi = square_roi([20, 20, 20], np.ones(3), 2.5, [16, 16, 16])
    seen = sample_roi(full, np.ones(3), roi, mode="nearest")
    vol = _volume(full)
    start, plain = _paste_roi(seen.clone(), roi, vol, 0.5)
    lo, hi = start, start + np.asarray(plain.shape[::-1])
    truth = mask.region(lo, hi)
    fin = np.zeros_like(truth, bool)
    fin[tuple(slice(a, b) for a, b in zip((np.array([3, 20, 20]) - lo)[::-1], (np.array([14, 21, 21]) - lo)[::-1]))] = True
    fin &= truth > 0
    assert fin.sum() > 5
    # Re-drawn from the coarse grid, the fin is lost (this is what the option is for).
    assert plain[fin].mean() < 0.5
    _, kept = _paste_roi(seen.clone(), roi, vol, 0.5, mask, seen)
    np.testing.assert_array_equal(kept, truth)
    # A change the result does make is applied.
    grown = seen.clone()
    grown[2:5, 2:5, 2:5] = 1.0
    _, changed = _paste_roi(grown, roi, vol, 0.5, mask, seen)
    assert changed[fin].all() and changed.sum() > truth.sum() + 100


@pytest.mark.parametrize("detail", [False, True])
def test_deepgrow_keeps_detail_far_from_a_click_only_with_the_setting(detail):
    full = _thin_object()
    mask = BoxMask(SIZE, np.zeros(3, np.int64), full)
    settings = {"roi_size": [16, 16, 16], "fill": 0.7, "spacing_range_mm": [0.5, 8.0], "threshold": 0.5,
                "first_click_spacing_mm": 2.0, "guidance": {"encoding": "gaussian", "sigma_mm": 3.0},
                "keep_mask_detail": detail}
    fg = np.array([[20, 20, 20]])
    start, crop = run_deepgrow(_EchoMask(3), "deepgrow3d", settings, _volume(full), mask, fg, np.zeros((0, 3)),
                               "cpu", new_clicks=(fg, np.zeros((0, 3))))
    out = BoxMask(SIZE, start, crop).region(np.zeros(3), SIZE)
    fin = out[20, 20, 3:14]
    if detail:
        np.testing.assert_array_equal(out, full)
    else:
        assert fin.mean() < 0.5


def test_dextr_correction_keeps_detail_with_the_setting():
    full = _thin_object(half=13)  # j and k span 26 voxels: the box ROI is about 2 mm across them
    mask = BoxMask(SIZE, np.zeros(3, np.int64), full)
    settings = {"roi_size": [16, 16, 16], "margin_mm": 2.0, "threshold": 0.5, "guidance": {"sigma_vox": 1.5},
                "channels": ["image", "extreme_points", "foreground", "background", "mask"]}
    points = np.array([[3, 20, 20], [25, 20, 20], [20, 7, 20], [20, 32, 20], [20, 20, 7], [20, 20, 32]], float)
    fg = np.array([[20, 20, 20]])
    net = _EchoMask(4)
    for detail in (False, True):
        start, crop = run_dextr(net, {**settings, "keep_mask_detail": detail}, _volume(full), points, "cpu",
                                fg, np.zeros((0, 3)), mask)
        out = BoxMask(SIZE, start, crop).region(np.zeros(3), SIZE)
        if detail:
            np.testing.assert_array_equal(out, full)
        else:  # re-drawn from the ~2 mm grid, the object changes even though the network changed nothing
            assert np.count_nonzero(out != full) > 20


def test_bundle_refuses_a_keep_mask_detail_that_is_not_a_boolean(tmp_path):
    with pytest.raises(ConfigError, match="keep_mask_detail"):
        read_bundle(make_tiny_bundle("deepgrow3d", tmp_path / "b", settings={"keep_mask_detail": "yes"}))
