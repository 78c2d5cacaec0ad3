"""The click path's fast code gives what a straightforward reference gives.

Exact by construction (checked for equality): the extreme points from the outermost slices, the
non-zero box from axis reductions, the in-place intensity transform, the one-copy ROI sampling, the
in-place axis-by-axis paste-back, the boundary refinement's distance transform (scipy's feature transform
called on the mask's bytes) and block spreading.
Within float tolerance (checked on the default bundles and a crop of the sample CT): the networks'
convolutions on oneDNN at every batch size and the test-time flips in one batch, against the plain
module run one flip at a time; whole clicks (DeepGrow 3D with its re-fit passes, DEXTR3D) by Dice.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from claraseg.engine import boundary, runners
from claraseg.engine.boundary import edt
from claraseg.engine.masks import BoxMask, nonzero_box
from claraseg.engine.onednn import OneDnnConv, onednn_network
from claraseg.engine.session import compact_array, normaliser
from claraseg.guidance import box_roi, extreme_points, sample_roi, square_roi
from claraseg.guidance.roi import _affine_grid, _resample_axis_aligned, slice_axes
from claraseg.io.geometry import bounding_box
from claraseg.models.preprocess import apply_intensity
from claraseg.models.training import network_input


def _reference_extreme_points(mask):
    """The definition: every voxel listed, ties broken by the distance to the centroid of all voxels."""
    ijk = np.argwhere(np.asarray(mask) != 0)[:, ::-1]
    if len(ijk) == 0:
        return np.zeros((0, 3), np.int64)
    d2 = ((ijk - ijk.mean(axis=0)) ** 2).sum(axis=1)
    out = []
    for axis in range(3):
        for value in (ijk[:, axis].min(), ijk[:, axis].max()):
            idx = np.flatnonzero(ijk[:, axis] == value)
            out.append(ijk[idx[np.argmin(d2[idx])]])
    return np.asarray(out, np.int64)


def _random_masks(n=200, seed=0):
    rng = np.random.default_rng(seed)
    for t in range(n):
        m = rng.random(tuple(rng.integers(1, 24, 3))) < rng.random() * 0.2
        yield ndimage.binary_dilation(m) if t % 3 == 0 else m


def test_extreme_points_and_boxes_equal_the_reference_exactly():
    for m in _random_masks():
        assert np.array_equal(extreme_points(m), _reference_extreme_points(m))
        a, b = bounding_box(m), nonzero_box(m.astype(np.uint8))
        assert (a is None and b is None) or (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
    assert extreme_points(np.zeros((3, 4, 5), bool)).shape == (0, 3)
    assert BoxMask((5, 4, 3), None, np.zeros((3, 4, 5), np.uint8)).is_empty


def _reference_compact(a):
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        for dt in (np.uint8, np.int8, np.int16, np.uint16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max and np.dtype(dt).itemsize <= a.dtype.itemsize:
                return a.astype(dt)
        return a.copy()
    big = float(np.abs(a).max()) if a.size else 0.0
    return a.astype(np.float16) if big < 60000 and a.dtype.itemsize > 2 else a.copy()


def test_session_voxels_are_compacted_as_before():
    rng = np.random.default_rng(6)
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, bool):
        for scale in (1, 300, 1e5):
            a = rng.normal(0, scale, (6, 7, 8)).astype(dt)
            for view in (a, a[:, ::2], np.zeros((0, 3, 3), dt)):
                got, ref = compact_array(view), _reference_compact(view)
                assert got.dtype == ref.dtype and np.array_equal(got, ref)
                assert got is not view and not np.shares_memory(got, view)


def test_distance_transform_equals_scipys_exactly():
    rng = np.random.default_rng(2)
    for t, m in enumerate(_random_masks(120, seed=2)):
        sampling = tuple(rng.random(3) * 2 + 0.1) if t % 2 else (0.5, 0.25, 1.0)
        ref = ndimage.distance_transform_edt(m, sampling=sampling)
        assert np.array_equal(edt(m, sampling), ref)
        assert np.array_equal(edt(~m, sampling), ndimage.distance_transform_edt(~m, sampling=sampling))
        if t % 10 == 0:  # a non-contiguous view, and a uint8 array (through scipy's own wrapper)
            view = m[:, ::2]
            assert np.array_equal(edt(view, sampling), ndimage.distance_transform_edt(view, sampling=sampling))
            assert np.array_equal(edt(m.astype(np.uint8), sampling), ref)


def test_signed_distance_on_blocks_equals_the_out_of_place_formula_exactly():
    rng = np.random.default_rng(5)
    for m in _random_masks(60, seed=5):
        if not m.any():
            continue
        f = tuple(int(v) for v in rng.integers(1, 4, 3))
        scale = rng.random(3) * 0.5 + 0.1
        pad = [(0, (-n) % k) for n, k in zip(m.shape, f)]
        e = np.pad(m.astype(np.float32), pad, mode="edge")
        s = e.shape
        a = e.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).mean(axis=(1, 3, 5))
        counts = boundary._block_counts(m, f)
        assert np.array_equal(2 * counts >= int(np.prod(f)), a >= 0.5) and np.array_equal(counts > 0, a > 0)
        rep = a
        for axis, k in enumerate(f):
            rep = np.repeat(rep, k, axis=axis)
        assert np.array_equal(boundary._unblock(a, f, m.shape), rep[: m.shape[0], : m.shape[1], : m.shape[2]])
        coarse = a >= 0.5
        if not coarse.any():
            coarse = a > 0
        signed = boundary._edt_pair(coarse, tuple(scale * np.asarray(f)))
        for axis, k in enumerate(f):
            signed = np.repeat(signed, k, axis=axis)
        signed = signed[: m.shape[0], : m.shape[1], : m.shape[2]]
        step = float(scale.min())
        ref = np.where(m, np.maximum(signed, step), np.minimum(signed, -step))
        assert np.array_equal(boundary._signed_distance(m, scale, f), ref)


def _reference_resample(values, scale, offset, size):
    out = values
    for axis in range(3):
        dim = 2 - axis
        n = values.shape[dim]
        u = np.clip(scale[axis] * np.arange(int(size[axis])) + offset[axis], 0.0, n - 1.0)
        lo = np.floor(u).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        shape = [1, 1, 1]
        shape[dim] = len(u)
        w = torch.from_numpy((u - lo).astype(np.float32)).view(shape)
        first = out.index_select(dim, torch.from_numpy(lo))
        out = first + (out.index_select(dim, torch.from_numpy(hi)) - first) * w
    return out


def test_paste_back_resampling_equals_the_out_of_place_formula_exactly():
    rng = np.random.default_rng(4)
    for _ in range(40):
        v = torch.rand(tuple(int(n) for n in rng.integers(2, 20, 3)))
        scale, offset, size = rng.random(3) * 0.8 + 0.05, rng.random(3) * 3 - 1, rng.integers(1, 50, 3)
        assert torch.equal(_resample_axis_aligned(v, scale, offset, size), _reference_resample(v, scale, offset, size))


def test_in_place_normalisation_and_one_copy_sampling_are_exact():
    rng = np.random.default_rng(1)
    vol = rng.integers(-1000, 1500, (30, 40, 50)).astype(np.int16)
    for params in [(-250.0, 350.0, 1.0), (12.345, 987.6, 1.5)]:
        x = torch.from_numpy(vol.astype(np.float32))
        assert torch.equal(apply_intensity(x, params), normaliser(params)(x.clone()))
        roi = square_roi([20.3, 17.8, 14.2], [0.7, 0.7, 2.0], 1.3, (16, 16, 16))
        plain = sample_roi(torch.from_numpy(np.ascontiguousarray(vol)).float().numpy(), [0.7, 0.7, 2.0], roi,
                           transform=lambda t, p=params: apply_intensity(t, p))
        fast = sample_roi(vol, [0.7, 0.7, 2.0], roi, transform=normaliser(params))
        assert torch.equal(plain, fast)
    before = vol.copy()
    sample_roi(vol, [0.7, 0.7, 2.0], roi, transform=normaliser((0.0, 1.0, 1.0)))
    assert np.array_equal(vol, before)  # the transform changed the sampler's copy, not the volume


def _reference_nearest(volume, spacing, roi):
    """``sample_roi``'s nearest mode as one ``grid_sample`` over the float32 source box."""
    a, b = roi.affine(spacing)
    q = roi.corners_index(spacing)
    shape = np.asarray(volume.shape[::-1], dtype=np.int64)
    lo = np.clip(np.floor(q.min(axis=0)).astype(np.int64) - 1, 0, shape)
    hi = np.clip(np.ceil(q.max(axis=0)).astype(np.int64) + 2, 0, shape)
    if np.any(hi <= lo):
        return torch.zeros(tuple(roi.size[::-1]))
    sub = torch.from_numpy(np.ascontiguousarray(np.asarray(volume[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]))).float()
    grid = _affine_grid(a, b - lo, roi.size, sub.shape)
    return torch.nn.functional.grid_sample(sub[None, None], grid, mode="nearest", padding_mode="zeros",
                                           align_corners=False)[0, 0]


def test_nearest_sampling_of_axis_aligned_rois_equals_grid_sample_exactly():
    """Masks (BoxMask) and arrays of several dtypes, ROIs inside, across and outside the volume, grids on
    half voxels (rounding ties), 2D slice ROIs along every axis (i and j ones take grid_sample itself)."""
    rng = np.random.default_rng(9)
    for t in range(300):
        shape = tuple(int(v) for v in rng.integers(2, 40, 3))
        m = rng.random(shape) < 0.4
        if t % 2:
            vol = BoxMask(shape[::-1], None, m.astype(np.uint8))
        else:
            vol = (rng.normal(size=shape) * 100).astype([np.int16, np.float32, np.uint8, np.float16][t % 4 // 2 + t % 3])
        sp = rng.random(3) * 2 + 0.3 if t % 3 else np.array([0.5, 0.5, 2.0])
        centre = rng.random(3) * np.asarray(shape[::-1]) * 1.6 - 0.3 * np.asarray(shape[::-1])
        size = tuple(int(v) for v in rng.integers(1, 30, 3))
        if t % 5 == 0:
            roi = square_roi(np.rint(centre * 2) / 2, sp, [0.25, 0.5, 1.0, 2.0][t % 4] * float(sp[0]), size)
        elif t % 5 == 1:
            roi = square_roi(centre, sp, [float(rng.random() * 3 + 0.2)] * 2 + [float(sp[t % 3])], (size[0], size[1], 1),
                             slice_axes(t % 3))
        else:
            roi = box_roi(centre - rng.random(3) * 15, centre + rng.random(3) * 15, sp, float(rng.random() * 8), size)
        assert torch.equal(sample_roi(vol, sp, roi, mode="nearest"), _reference_nearest(vol, sp, roi))


@pytest.fixture(scope="module")
def default_backend():
    """The default bundles with their networks on torch (``CLARASEG_RUNTIME=torch`` while they load): the
    fast path under test is the torch module's."""
    from claraseg.engine import LocalBackend

    backend = LocalBackend(device="cpu", idle_timeout=None)
    saved = os.environ.get("CLARASEG_RUNTIME")
    os.environ["CLARASEG_RUNTIME"] = "torch"
    try:
        for model in ("deepgrow3d", "dextr3d", "deepgrow2d"):
            assert isinstance(backend.registry.network(model, "cpu"), torch.nn.Module)
    finally:
        if saved is None:
            os.environ.pop("CLARASEG_RUNTIME", None)
        else:
            os.environ["CLARASEG_RUNTIME"] = saved
    yield backend
    backend.close()


def _reference_forward(net, x, kind, device, tta=1):
    """The plain module, one flipped input at a time, the probabilities averaged."""
    inp = network_input(x, kind)
    flips = runners.flip_sets(inp.ndim - 2, tta)
    with torch.no_grad():
        probs = [torch.sigmoid(net(inp.flip(f) if f else inp)) for f in flips]
    probs = torch.stack([p.flip(f) if f else p for p, f in zip(probs, flips)]).mean(dim=0)
    out = probs[0, 0]
    return out[None] if kind == "deepgrow2d" else out


@pytest.mark.parametrize("model, shape, tta", [("deepgrow3d", (4, 64, 64, 64), 1), ("dextr3d", (5, 48, 48, 48), 8),
                                               ("deepgrow2d", (4, 1, 128, 128), 4)])
def test_onednn_batched_flips_agree_with_the_plain_module_one_flip_at_a_time(default_backend, model, shape, tta):
    net = default_backend.registry.network(model, "cpu")
    fast = onednn_network(net)
    assert fast is not net and onednn_network(net) is fast
    assert any(isinstance(m, OneDnnConv) for m in fast.modules())
    assert all(a is b for a, b in zip(net.parameters(), fast.parameters()))  # shared, not copied
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    x[1:] = (x[1:] > 0.9).float()  # guidance-like channels
    kind = model
    got = runners.forward(net, x, kind, "cpu", tta)
    ref = _reference_forward(net, x, kind, "cpu", tta)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-4


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_clicks_on_a_real_ct_crop_match_the_reference_path(default_backend, ct_pair, monkeypatch):
    """DeepGrow 3D (first click, a correction: re-fit passes, boundary refinement) and DEXTR3D on a crop
    of the sample CT: the fast path's masks against the plain module one flip at a time."""
    from claraseg.io.geometry import crop

    image, label = ct_pair
    value = next(v for v, info in label.labels.items() if info.name == "spleen")
    spleen = np.argwhere(label.array == value)  # [k, j, i]
    lo = np.maximum(spleen.min(axis=0)[::-1] - 12, 0)
    hi = np.minimum(spleen.max(axis=0)[::-1] + 13, image.size_ijk)
    img, lab = crop(image, lo, hi), crop(label, lo, hi)
    truth = lab.array == value
    kji = np.argwhere(truth)
    centre = kji[len(kji) // 2][::-1].tolist()
    outside = (np.argwhere(ndimage.binary_dilation(truth, iterations=3) & ~truth)[0][::-1]).tolist()
    pts = _reference_extreme_points(truth).tolist()

    def run():
        s = default_backend.open_session(img)
        try:
            s.click("deepgrow3d", [centre], object_id="a")
            first = s.mask("a").astype(bool)
            s.click("deepgrow3d", [], [outside], object_id="a")
            second = s.mask("a").astype(bool)
            s.extreme_points("dextr3d", pts, object_id="b")
            return first, second, s.mask("b").astype(bool)
        finally:
            s.close()

    fast = run()
    monkeypatch.setattr(runners, "forward", _reference_forward)
    ref = run()
    for f, r in zip(fast, ref):
        assert r.any()
        assert _dice(f, r) >= 0.999
