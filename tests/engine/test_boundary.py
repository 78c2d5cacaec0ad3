"""Boundary refinement at the image's resolution (:mod:`claraseg.engine.boundary`): it moves a boundary
that a coarse grid put one voxel off onto the image's edge, leaves a mask made on a grid as fine as the
image alone, keeps every click's answer, and is wired into DeepGrow 3D clicks by ``boundary_refine``."""

from __future__ import annotations

import numpy as np
import pytest

from claraseg.engine.boundary import refine_boundary
from claraseg.engine.masks import BoxMask
from claraseg.evaluate.protocol import dice

SIZE = (48, 48, 40)  # i, j, k
CENTRE = np.array([24.0, 24.0, 20.0])


def _ball(radius: float, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    k, j, i = np.indices(SIZE[::-1], dtype=np.float64)
    sp = np.asarray(spacing)
    d2 = ((i - CENTRE[0]) * sp[0]) ** 2 + ((j - CENTRE[1]) * sp[1]) ** 2 + ((k - CENTRE[2]) * sp[2]) ** 2
    return d2 <= radius * radius


def _image(truth: np.ndarray, contrast: float = 200.0, noise: float = 20.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100.0 + contrast * truth + rng.normal(0.0, noise, truth.shape)).astype(np.float32)


def _box(a: np.ndarray) -> BoxMask:
    return BoxMask(SIZE, np.zeros(3, np.int64), a.astype(np.uint8))


def _full(m: BoxMask) -> np.ndarray:
    return m.region(np.zeros(3, np.int64), np.asarray(SIZE)) > 0


@pytest.mark.parametrize("radius", [9.0, 11.0])
def test_a_boundary_one_voxel_off_moves_to_the_edge(radius):
    """A ball one voxel too small (or too large), as a grid twice as coarse as the image leaves it, is
    brought to the bright ball's edge: Dice to the truth rises and the change stays within the band."""
    truth = _ball(10.0)
    mask = _ball(radius)
    out = _full(refine_boundary(_image(truth), (1, 1, 1), _box(mask), (2.0, 2.0, 2.0)))
    assert dice(mask, truth) < 0.92
    assert dice(out, truth) > 0.97
    changed = np.argwhere(out != mask)
    dist = np.linalg.norm(changed[:, ::-1] - CENTRE, axis=1)
    assert np.all(np.abs(dist - radius) <= 2.0)


def test_a_grid_far_coarser_than_the_image_measures_distances_on_blocks():
    """ROI voxels 4x the image's: distances are measured on 2x2x2 blocks (twice as fine as the ROI),
    every voxel is still decided from its own intensity, and voxels deeper than the band keep theirs."""
    truth = _ball(12.0)
    mask = _ball(9.5)
    out = _full(refine_boundary(_image(truth), (1, 1, 1), _box(mask), (4.0, 4.0, 4.0)))
    assert dice(mask, truth) < 0.85
    assert dice(out, truth) > 0.95
    k, j, i = np.indices(truth.shape)
    dist = np.sqrt((i - CENTRE[0]) ** 2 + (j - CENTRE[1]) ** 2 + (k - CENTRE[2]) ** 2)
    deep = dist < 9.5 - 8.0  # more than 2 ROI voxels inside: never in the band
    assert np.array_equal(out[deep], mask[deep])


def test_nothing_changes_where_the_grid_was_finer_than_the_image():
    """On a grid 1.5x finer than the image no voxel centre is within 1.5 ROI voxels of the boundary but
    the boundary's own; at the image's resolution only the voxels next to the boundary may change."""
    truth, mask = _ball(10.0), _box(_ball(8.0))
    assert refine_boundary(_image(truth), (1, 1, 1), mask, (0.6, 0.6, 0.6)) is mask
    out = _full(refine_boundary(_image(truth), (1, 1, 1), mask, (1.0, 1.0, 1.0)))
    changed = np.argwhere(out != _full(mask))
    dist = np.linalg.norm(changed[:, ::-1] - CENTRE, axis=1)
    assert len(changed) and np.all(np.abs(dist - 8.0) <= 1.5)


def test_anisotropic_grid_refines_only_along_its_coarse_axis():
    """The grid is coarse along k only: along i and j the band holds no voxel."""
    truth = _ball(10.0)
    mask = _ball(10.0) & (np.abs(np.indices(truth.shape)[0] - CENTRE[2]) <= 8)  # cut 2 voxels short along k
    out = _full(refine_boundary(_image(truth), (1, 1, 1), _box(mask), (0.8, 0.8, 2.5)))
    assert dice(out, truth) > dice(mask, truth) + 0.01
    grown = np.argwhere(out & ~mask)
    assert len(grown) and np.all(np.abs(grown[:, 0] - CENTRE[2]) > 8)


def test_no_contrast_leaves_the_mask_almost_as_it_was():
    """On an image without an edge (noise only) the distance prior wins: the mask barely moves."""
    mask = _ball(10.0)
    flat = _image(np.zeros(mask.shape, bool))
    out = _full(refine_boundary(flat, (1, 1, 1), _box(mask), (2.0, 2.0, 2.0)))
    assert dice(out, mask) > 0.97


def test_clicks_keep_their_answers():
    truth = _ball(10.0)
    mask = _ball(10.0)
    fg = np.array([[24, 24, 33]])   # outside the bright ball: the user says it belongs
    bg = np.array([[24, 24, 20]])   # its centre: the user says it does not
    mask[33, 24, 24] = True
    out = _full(refine_boundary(_image(truth), (1, 1, 1), _box(mask), (2.0, 2.0, 2.0), fg, bg))
    assert out[33, 24, 24] and not out[20, 24, 24]


def test_small_or_empty_masks_come_back_unchanged():
    truth = _ball(10.0)
    empty = BoxMask(SIZE)
    assert refine_boundary(_image(truth), (1, 1, 1), empty, (2.0, 2.0, 2.0)) is empty
    tiny = np.zeros(truth.shape, bool)
    tiny[20, 24, 24] = True
    m = _box(tiny)
    assert refine_boundary(_image(truth), (1, 1, 1), m, (2.0, 2.0, 2.0)) is m


def test_deepgrow3d_clicks_refine_their_boundary_when_the_bundle_asks(tiny_backend, small_phantom, monkeypatch):
    """``boundary_refine`` in a DeepGrow 3D bundle runs the refinement on every click's result, with the
    re-fit model's grid and all of the object's clicks; without it the click's result is unchanged."""
    from claraseg.engine import stages as stages_module

    bundle = tiny_backend.registry.get("deepgrow3d")
    calls = []
    real = stages_module.refine_boundary

    def spy(voxels, spacing, mask, roi, fg, bg, **kw):
        calls.append((roi, np.asarray(fg).tolist(), np.asarray(bg).tolist(), kw, mask.stop - mask.start - 1))
        return real(voxels, spacing, mask, roi, fg, bg, **kw)

    monkeypatch.setattr(stages_module, "refine_boundary", spy)
    s = tiny_backend.open_session(small_phantom[0])
    try:
        monkeypatch.setitem(bundle.settings, "boundary_refine", None)
        s.click("deepgrow3d", foreground=[[24, 24, 12]])
        assert calls == []
        monkeypatch.setitem(bundle.settings, "boundary_refine", {"band": 1.0, "tau": 0.5})
        s.click("deepgrow3d", foreground=[[20, 24, 12]], background=[[2, 2, 2]])
        assert len(calls) == 1
        roi, fg, bg, kw, extent_vox = calls[0]
        assert fg == [[24, 24, 12], [20, 24, 12]] and bg == [[2, 2, 2]]
        assert kw == {"band": 1.0, "tau": 0.5}
        # The grid is the DEXTR3D re-fit's over the mask's box: (extent + 2 margins) / (ROI size - 1).
        refit = tiny_backend.registry.get(bundle.settings["shape_refit_model"]).settings
        extent = extent_vox * np.asarray(small_phantom[0].spacing)
        np.testing.assert_allclose(roi, (extent + 2 * refit["margin_mm"]) / (np.asarray(refit["roi_size"]) - 1))
        # Without a re-fit model the grid is the isotropic one DeepGrow 3D refines an object of that size on.
        from claraseg.guidance.roi import object_spacing

        monkeypatch.setitem(bundle.settings, "shape_refit_model", None)
        s.click("deepgrow3d", foreground=[[22, 24, 12]])
        roi, _, _, _, extent_vox = calls[1]
        size = float(((extent_vox + 1) * np.asarray(small_phantom[0].spacing)).max())
        want = object_spacing(size, bundle.settings["roi_size"][0], bundle.settings["correction_fill"],
                              bundle.settings["spacing_range_mm"])
        np.testing.assert_allclose(roi, [want] * 3)
        # An empty object asks for the defaults; it does not turn the refinement off.
        monkeypatch.setitem(bundle.settings, "boundary_refine", {})
        s.click("deepgrow3d", foreground=[[23, 24, 12]])
        assert len(calls) == 3 and calls[2][3] == {}
        assert s.mask()[12, 24, 20] == 1 and s.mask()[2, 2, 2] == 0
    finally:
        s.close()


def test_dextr3d_refines_its_points_result_and_its_corrections_when_its_bundle_asks(tiny_backend, small_phantom,
                                                                                   monkeypatch):
    """A DEXTR3D bundle with ``boundary_refine`` refines the result of its extreme points and of every
    correcting click, on the grid of the points' box (the ROI it ran on)."""
    from claraseg.engine import stages as stages_module
    from claraseg.engine.runners import dextr_roi

    bundle = tiny_backend.registry.get("dextr3d")
    calls = []
    real = stages_module.refine_boundary

    def spy(voxels, spacing, mask, roi, fg, bg, **kw):
        calls.append((np.asarray(roi), np.asarray(fg).tolist(), np.asarray(bg).tolist()))
        return real(voxels, spacing, mask, roi, fg, bg, **kw)

    monkeypatch.setattr(stages_module, "refine_boundary", spy)
    monkeypatch.setitem(bundle.settings, "boundary_refine", {"band": 1.0})
    image = small_phantom[0]
    points = [[10, 24, 12], [38, 24, 12], [24, 10, 12], [24, 38, 12], [24, 24, 4], [24, 24, 20]]
    s = tiny_backend.open_session(image)
    try:
        s.extreme_points("dextr3d", points)
        assert s.mask().any()  # the seeded tiny network draws something, so there is a boundary to refine
        grid = dextr_roi(bundle.settings, np.asarray(points), image.spacing).spacing
        assert len(calls) == 1
        np.testing.assert_allclose(calls[0][0], grid)
        assert bundle.settings["channels"][-1] == "mask"  # a click-reading DEXTR3D: it corrects itself
        s.click("dextr3d", background=[[24, 24, 12]])
        assert len(calls) == 2 and calls[1][2] == [[24, 24, 12]]
        assert s.mask()[12, 24, 24] == 0
    finally:
        s.close()


def test_a_flat_image_or_an_object_at_the_border_is_handled():
    """A constant image has no intensities to model (the mask comes back as it was); an object cut by the
    image border is refined like any other (its inside distances end at the border)."""
    mask = _box(_ball(10.0))
    flat = np.full(SIZE[::-1], 7, np.int16)
    assert refine_boundary(flat, (1, 1, 1), mask, (2.0, 2.0, 2.0)) is mask
    k, j, i = np.indices(SIZE[::-1])
    truth = (k < 12) & (np.abs(i - 24) < 12) & (np.abs(j - 24) < 12)   # a slab on the k = 0 face
    short = (k < 12) & (np.abs(i - 24) < 11) & (np.abs(j - 24) < 11)   # one voxel short in i and j
    out = _full(refine_boundary(_image(truth), (1, 1, 1), _box(short), (2.0, 2.0, 2.0)))
    assert dice(out, truth) > dice(short, truth) + 0.03
    assert out[0].any() and not out[20:].any()
