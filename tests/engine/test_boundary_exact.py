"""Boundary refinement's fast code (:mod:`claraseg.engine.boundary`) gives exactly what the straightforward
computation gives: scipy's ``distance_transform_edt`` of both sides on the whole region, block shares as
float means of the edge-padded mask, the region's intensities converted to float32 up front, and the two
distance transforms one after the other or on two threads. Random masks and images, masks touching the
volume's border, empty, full and single-voxel masks, clicks, every voxel dtype the session keeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from claraseg.engine import boundary
from claraseg.engine.boundary import MAX_SAMPLES, MIN_SAMPLES, refine_boundary
from claraseg.engine.masks import BoxMask


def _reference(voxels, spacing, mask, roi_spacing, fg=(), bg=(), band=1.0, tau=0.7, ring=4.0, bins=48):
    """The refinement written plainly (the same rules as :func:`refine_boundary`'s docstring)."""
    if mask.is_empty:
        return mask
    scale = np.asarray(spacing, np.float64) / np.maximum(np.asarray(roi_spacing, np.float64), 1e-6)
    if float(scale.min()) > band + 0.5:
        return mask
    size = np.asarray(mask.size, np.int64)
    fg, bg = np.asarray(fg, np.int64).reshape(-1, 3), np.asarray(bg, np.int64).reshape(-1, 3)
    factor = np.maximum(1, np.rint(0.5 / scale)).astype(np.int64)
    pad = np.ceil((band + ring + 1.0) / scale).astype(np.int64)
    lo = np.maximum(np.asarray(mask.start) - pad, 0)
    hi = np.minimum(np.asarray(mask.stop) + pad, size)
    if len(fg):
        lo, hi = np.minimum(lo, fg.min(axis=0)), np.maximum(hi, fg.max(axis=0) + 1)
    inside = mask.region(lo, hi) > 0
    image = np.asarray(voxels[tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))], dtype=np.float32)
    sc, f = scale[::-1], tuple(int(v) for v in factor[::-1])

    def pair(m, sampling):
        return np.where(m, ndimage.distance_transform_edt(m, sampling=sampling),
                        -ndimage.distance_transform_edt(~m, sampling=sampling))

    if f == (1, 1, 1):
        signed = pair(inside, tuple(sc))
    else:
        e = np.pad(inside.astype(np.float32), [(0, (-n) % k) for n, k in zip(inside.shape, f)], mode="edge")
        s = e.shape
        share = e.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).mean(axis=(1, 3, 5))
        coarse = share >= 0.5
        if not coarse.any():
            coarse = share > 0
        signed = pair(coarse, tuple(sc * np.asarray(f)))
        for axis, k in enumerate(f):
            signed = np.repeat(signed, k, axis=axis)
        signed = signed[: inside.shape[0], : inside.shape[1], : inside.shape[2]]
        step = float(np.min(sc))
        signed = np.where(inside, np.maximum(signed, step), np.minimum(signed, -step))
    core = (signed > band) & (signed <= band + ring)
    if np.count_nonzero(core) < MIN_SAMPLES * 2.5:
        core = (signed > 1.0) & (signed <= band + ring)
    background = (signed < -band) & (signed >= -(band + ring))
    if np.count_nonzero(core) < MIN_SAMPLES or np.count_nonzero(background) < MIN_SAMPLES:
        return mask
    samples = image[core | background]
    low, high = np.percentile(samples[:: max(1, len(samples) // MAX_SAMPLES)], [0.5, 99.5])
    if not high > low:
        return mask

    def bin_of(v):
        return np.clip(((v - low) * (bins / (high - low))).astype(np.int64), 0, bins - 1)

    def density(v):
        v = v[:: max(1, len(v) // MAX_SAMPLES)]
        h = ndimage.gaussian_filter1d(np.bincount(bin_of(v), minlength=bins).astype(np.float64) + 1.0, 1.0)
        return h / h.sum()

    log_ratio = np.log(density(image[core])) - np.log(density(image[background]))
    near = np.abs(signed) <= band + 0.5
    new = inside.copy()
    new[near] = log_ratio[bin_of(image[near])] + signed[near] / tau > 0
    labels, n = ndimage.label(new, structure=np.ones((3, 3, 3), bool))
    if n > 1:
        keep = np.unique(labels[new & inside])
        new = np.isin(labels, keep[keep > 0])
    for points, value in ((fg, True), (bg, False)):
        c = points - lo
        c = c[np.all((c >= 0) & (c < hi - lo), axis=1)]
        new[c[:, 2], c[:, 1], c[:, 0]] = value
    if not new.any():
        return mask
    return BoxMask(mask.size, lo, new.astype(np.uint8))


def _cases(n, seed):
    """(voxels, spacing, mask, roi_spacing, fg, bg): blobs near and on the volume's border, noise masks,
    empty, full and one-voxel masks, ROI grids from as fine as the image to 6x coarser (blocks)."""
    rng = np.random.default_rng(seed)
    dtypes = (np.int16, np.uint8, np.float16, np.float32, np.float64)
    for t in range(n):
        shape = tuple(int(v) for v in rng.integers(12, 40, 3))  # [k, j, i]
        k, j, i = np.indices(shape, dtype=np.float64)
        c = rng.random(3) * np.asarray(shape)
        if t % 5 == 0:
            c[rng.integers(0, 3)] = 0.0  # centred on a face: the mask touches the border
        r = rng.random(3) * np.asarray(shape) * 0.4 + 3.0
        truth = ((k - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((i - c[2]) / r[2]) ** 2 <= 1.0
        kind = t % 8
        if kind == 6:
            m = np.ones(shape, bool)
        elif kind == 7:
            m = np.zeros(shape, bool)
            m[tuple(int(rng.integers(0, s)) for s in shape)] = True
        else:
            m = ndimage.binary_dilation(truth, iterations=int(rng.integers(0, 2))) if kind % 2 else truth.copy()
            m ^= rng.random(shape) < 0.02 * (kind % 3)
        image = 100.0 + 200.0 * truth + rng.normal(0.0, 40.0, shape)
        dt = dtypes[t % len(dtypes)]
        if dt is np.uint8:
            image = np.clip(image * 0.5, 0, 255)
        voxels = image.astype(dt)
        spacing = rng.random(3) * 1.5 + 0.3
        roi_spacing = spacing * (rng.random(3) * 5.5 + 0.6) if t % 4 else np.full(3, float(spacing.max()) * 4)
        fg = np.argwhere(m)[:2, ::-1] if m.any() and t % 3 == 0 else np.zeros((0, 3), np.int64)
        bg = np.argwhere(~m)[:1, ::-1] if (~m).any() and t % 3 == 1 else np.zeros((0, 3), np.int64)
        yield voxels, spacing, BoxMask(shape[::-1], None, m.astype(np.uint8)), roi_spacing, fg, bg


@pytest.mark.parametrize("threads", [1, 2])
def test_refinement_equals_the_straightforward_computation(threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        decided = 0
        for voxels, spacing, mask, roi, fg, bg in _cases(160, seed=threads):
            got = refine_boundary(voxels, spacing, mask, roi, fg, bg)
            ref = _reference(voxels, spacing, mask, roi, fg, bg)
            assert np.array_equal(got.start, ref.start) and np.array_equal(got.crop, ref.crop)
            decided += got is not mask
        assert decided >= 45  # a third of the cases really re-decide their boundary
    finally:
        torch.set_num_threads(saved)
    assert refine_boundary(np.zeros((5, 5, 5), np.int16), (1, 1, 1), BoxMask((5, 5, 5)), (2, 2, 2)).is_empty


def test_the_two_transforms_give_the_same_distances_on_one_thread_or_two():
    rng = np.random.default_rng(3)
    for _ in range(30):
        m = rng.random(tuple(int(v) for v in rng.integers(2, 30, 3))) < rng.random()
        if not m.any():
            continue
        sampling = tuple(rng.random(3) * 2 + 0.1)
        serial = boundary._edt_pair(m, sampling, parallel=False)
        assert np.array_equal(serial, boundary._edt_pair(m, sampling, parallel=True))
        assert np.array_equal(serial, np.where(m, ndimage.distance_transform_edt(m, sampling=sampling),
                                               -ndimage.distance_transform_edt(~m, sampling=sampling)))


def test_distances_fall_back_to_scipys_wrapper_when_its_private_entry_point_is_missing_or_refuses(monkeypatch):
    rng = np.random.default_rng(5)
    m = rng.random((9, 11, 7)) < 0.4
    sampling = (0.7, 1.3, 2.0)
    expected = ndimage.distance_transform_edt(m, sampling=sampling)

    def refuses(*args):
        raise TypeError("euclidean_feature_transform() takes other arguments")

    monkeypatch.setattr(boundary, "_private_feature", refuses)
    assert np.array_equal(boundary.edt(m, sampling), expected)
    assert boundary._private_feature is None  # not tried again
    assert np.array_equal(boundary.edt(m, sampling), expected)
