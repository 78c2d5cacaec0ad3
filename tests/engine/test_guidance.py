"""Guidance: heat-map encodings, the click protocol, extreme points, jitter and ROI resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from claraseg.guidance import (
    extreme_points,
    gaussian_heatmap,
    jitter_points,
    random_click,
    sample_from_roi,
    sample_roi,
    sigma_in_voxels,
    square_roi,
)
from claraseg.guidance.roi import box_roi, slice_axes


def test_heatmap_values_and_anisotropic_sigma():
    # Grid with 1 mm along i and 2 mm along k: a 4 mm sigma is 4 voxels along i and 2 along k.
    sig = sigma_in_voxels(4.0, [1.0, 1.0, 2.0])
    assert sig.tolist() == [4.0, 4.0, 2.0]
    h = gaussian_heatmap([[10, 10, 10]], (21, 21, 21), sig)
    assert h.dtype == np.float32 and h[10, 10, 10] == pytest.approx(1.0)
    # 4 mm away is one sigma both along i (4 voxels) and along k (2 voxels): same value, exp(-1/2).
    assert h[10, 10, 14] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert h[12, 10, 10] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert h[10, 14, 10] == pytest.approx(h[10, 10, 14])


def test_heatmap_max_over_points_empty_and_floor():
    h = gaussian_heatmap([[0, 0, 0], [5, 0, 0]], (1, 1, 6), 1.0)
    assert h[0, 0, 0] == pytest.approx(1.0) and h[0, 0, 5] == pytest.approx(1.0)
    assert h[0, 0, 2] == pytest.approx(np.exp(-2.0), rel=1e-5)  # nearest point wins, not the sum
    assert not gaussian_heatmap(np.zeros((0, 3)), (3, 4, 5), 2.0).any()
    assert sigma_in_voxels(1.0, [3.0, 3.0, 3.0], min_sigma_vox=1.5).tolist() == [1.5, 1.5, 1.5]


def test_random_click_stays_inside_the_error():
    gt = np.zeros((11, 11, 11), np.uint8)
    gt[2:9, 2:9, 2:9] = 1
    rng = np.random.default_rng(0)
    ijk, fg = random_click(np.zeros_like(gt), gt, rng, p_deepest=1.0)
    assert fg and ijk.tolist() == [5, 5, 5]  # the deepest voxel of the object
    for _ in range(5):
        ijk, fg = random_click(np.zeros_like(gt), gt, rng, p_deepest=0.0)
        assert fg and gt[ijk[2], ijk[1], ijk[0]] == 1
    assert random_click(gt, gt, rng) is None


def test_random_click_on_2d_slice_stored_as_3d():
    gt = np.zeros((1, 9, 9), np.uint8)
    gt[0, 1:8, 2:7] = 1
    ijk, fg = random_click(np.zeros_like(gt), gt, np.random.default_rng(0), p_deepest=1.0)
    # The 2D distance is used (not 1 everywhere from padding the size-1 axis): i is centred, j ties.
    assert fg and ijk[0] == 4 and ijk[1] in (3, 4, 5) and ijk[2] == 0


def test_extreme_points_order_and_tie_rule():
    m = np.zeros((10, 12, 14), np.uint8)
    m[2:6, 3:9, 4:11] = 1
    pts = extreme_points(m)
    assert pts.shape == (6, 3)
    assert pts[0, 0] == 4 and pts[1, 0] == 10  # min and max along i
    assert pts[2, 1] == 3 and pts[3, 1] == 8  # along j
    assert pts[4, 2] == 2 and pts[5, 2] == 5  # along k
    # Among the tied voxels of the min-i face, the one nearest the centroid (j 5.5 -> 5 or 6, k 3.5 -> 3 or 4).
    assert pts[0, 1] in (5, 6) and pts[0, 2] in (3, 4)
    assert extreme_points(np.zeros((3, 3, 3))).shape == (0, 3)


def test_jitter_is_symmetric_and_clipped():
    rng = np.random.default_rng(1)
    base = np.full((2000, 3), 10)
    d = jitter_points(base, rng, 3) - base
    assert d.min() == -3 and d.max() == 3 and abs(d.mean()) < 0.2
    clipped = jitter_points(np.zeros((50, 3), int), rng, 3, size_ijk=(5, 5, 5))
    assert clipped.min() >= 0 and clipped.max() <= 4


def test_roi_identity_resampling_roundtrip():
    v = np.random.default_rng(0).random((20, 30, 40)).astype(np.float32)
    sp = [1.0, 1.0, 2.0]
    roi = square_roi([10, 12, 7], sp, sp, [9, 9, 9])
    out = sample_roi(v, sp, roi)
    assert out[4, 4, 4].item() == pytest.approx(v[7, 12, 10], abs=1e-6)
    start, stop = roi.covered_box(sp, [40, 30, 20])
    back = sample_from_roi(out, roi, sp, start, stop).numpy()
    np.testing.assert_allclose(back, v[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]], atol=1e-5)
    # Outside the volume the ROI reads zeros.
    far = sample_roi(v, sp, square_roi([500, 500, 500], sp, 1.0, [4, 4, 4]))
    assert not far.any()


def test_roi_transform_applies_before_interpolation():
    v = np.arange(64, dtype=np.int16).reshape(4, 4, 4)
    roi = square_roi([1.5, 1.5, 1.5], [1, 1, 1], 1.0, [2, 2, 2])
    plain = sample_roi(v, [1, 1, 1], roi)
    doubled = sample_roi(v, [1, 1, 1], roi, transform=lambda t: 2 * t)
    assert torch.allclose(doubled, 2 * plain)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_rois_on_every_axis(axis):
    v = np.random.default_rng(2).random((10, 11, 12)).astype(np.float32)
    centre = np.array([5.0, 5.0, 5.0])
    roi = square_roi(centre, [1, 1, 1], [1.0, 1.0, 1.0], [5, 5, 1], slice_axes(axis))
    out = sample_roi(v, [1, 1, 1], roi)
    assert out.shape == (1, 5, 5)
    start, stop = roi.covered_box([1, 1, 1], [12, 11, 10])
    assert stop[axis] - start[axis] == 1 and start[axis] == 5
    # The ROI's i axis runs along the first in-plane source axis.
    first = [a for a in range(3) if a != axis][0]
    idx = [5, 5, 5]
    idx[first] = 6
    assert out[0, 2, 3].item() == pytest.approx(v[idx[2], idx[1], idx[0]], abs=1e-6)


def test_box_roi_covers_points_with_margin():
    roi = box_roi([10, 10, 5], [20, 30, 8], [1.0, 1.0, 3.0], 5.0, [16, 16, 16])
    corners = roi.corners_index([1.0, 1.0, 3.0])
    assert corners.min(axis=0) == pytest.approx([5.0, 5.0, 5 - 5 / 3])
    assert corners.max(axis=0) == pytest.approx([25.0, 35.0, 8 + 5 / 3])


def test_test_time_flips_average_back_onto_the_input_grid():
    """``forward(tta=n)`` runs n flipped copies in one batch and flips each output back: a network that
    commutes with flips gives the plain result; one that does not gives the mean of the flipped views."""
    import torch

    from claraseg.engine.runners import flip_sets, forward

    assert flip_sets(3, 8)[0] == () and len(set(flip_sets(3, 8))) == 8 and len(flip_sets(2, 99)) == 4

    class Pointwise(torch.nn.Module):
        def forward(self, x):
            return x[:, :1] * 3 - 1

    class Ramp(torch.nn.Module):  # adds a ramp along i: not flip-equivariant
        def forward(self, x):
            return x[:, :1] + torch.linspace(-2, 2, x.shape[-1])

    x3 = torch.rand(2, 1, 5, 6, 7)
    x2 = torch.rand(4, 1, 6, 7)
    assert torch.allclose(forward(Pointwise(), x3, "dextr3d", "cpu", 8), forward(Pointwise(), x3, "dextr3d", "cpu"))
    assert torch.allclose(forward(Pointwise(), x2, "deepgrow2d", "cpu", 4), forward(Pointwise(), x2, "deepgrow2d", "cpu"))
    ramp = torch.linspace(-2, 2, 7)
    expect = (torch.sigmoid(x3[0] + ramp) + torch.sigmoid(x3[0] + ramp.flip(0))) / 2
    assert torch.allclose(forward(Ramp(), x3, "dextr3d", "cpu", 2), expect, atol=1e-6)


def test_results_honour_the_clicks_just_placed():
    """``honour_clicks``: voxels within the radius (mm, anisotropic spacing) of a new foreground click
    become 1, of a background click 0; clicks outside the crop change nothing."""
    from claraseg.engine.runners import honour_clicks

    crop = np.zeros((5, 9, 9), np.uint8)  # [k, j, i], box starting at [i, j, k] = [10, 20, 30]
    crop[2, 6:, 6:] = 1
    start = np.array([10, 20, 30])
    spacing = np.array([1.0, 1.0, 3.0])
    honour_clicks(crop, start, np.array([[14, 24, 32]]), np.array([[17, 27, 32], [0, 0, 0]]), 1.0, spacing)
    assert crop[2, 4, 4] == 1 and crop[2, 3, 4] == 1 and crop[2, 4, 5] == 1  # the ball in plane (1 voxel)
    assert crop[2, 3, 3] == 0 and crop[1, 4, 4] == 0 and crop[3, 4, 4] == 0  # not the corner, not +-3 mm in k
    assert crop[2, 7, 7] == 0 and crop[2, 6, 7] == 0 and crop[2, 8, 8] == 1  # the background ball
    assert crop.sum() == 5 + 9 - 5
    before = crop.copy()
    honour_clicks(crop, start, np.zeros((0, 3)), np.array([[100, 100, 100]]), 5.0, spacing)
    assert np.array_equal(crop, before)


def test_axis_aligned_paste_back_matches_grid_sample():
    """An axis-aligned ROI is pasted back axis by axis; it gives grid_sample's trilinear values (border
    padding, align_corners=False) to float precision, on a box ROI and on a square one."""
    import torch.nn.functional as F

    from claraseg.guidance.roi import _affine_grid

    rng = np.random.default_rng(5)
    sp = np.array([0.7, 0.9, 2.5])
    for roi in (box_roi(np.array([10.0, 12.0, 3.0]), np.array([60.0, 40.0, 20.0]), sp, 6.0, (48, 40, 32)),
                square_roi(np.array([30.0, 30.0, 12.0]), sp, 1.7, (32, 32, 32))):
        start, stop = roi.covered_box(sp, (80, 70, 30))
        values = torch.from_numpy(rng.random(roi.size[::-1]).astype(np.float32))
        a, b = roi.affine(sp)
        inv = np.linalg.inv(a)
        grid = _affine_grid(inv, inv @ (start - b), stop - start, values.shape)
        want = F.grid_sample(values[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
        got = sample_from_roi(values, roi, sp, start, stop)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) < 1e-4
