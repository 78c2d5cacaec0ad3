"""The packaged default bundles: they load, and with their trained weights a few clicks on a large organ
of the sample CT (and of a fresh phantom) give a sensible mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from claraseg.evaluate.protocol import dice, run_structure
from claraseg.guidance import extreme_points
from claraseg.models.registry import PACKAGED_DIR, ModelRegistry

KINDS = ("deepgrow3d", "deepgrow2d", "dextr3d", "segmentation")


@pytest.fixture(scope="module")
def default_backend():
    from claraseg.engine import LocalBackend

    missing = [k for k in KINDS if not (PACKAGED_DIR / k / "models" / "model.pt").is_file()]
    if missing:
        pytest.skip(f"default weights not trained yet: {missing} (run claraseg pretrain)")
    backend = LocalBackend(PACKAGED_DIR, device="cpu", idle_timeout=None)
    yield backend
    backend.close()


def test_packaged_bundles_are_complete():
    reg = ModelRegistry(PACKAGED_DIR)
    assert set(KINDS) <= set(reg.names())
    for kind in KINDS:
        meta = json.loads((PACKAGED_DIR / kind / "configs" / "metadata.json").read_text())
        assert meta["claraseg"]["kind"] == kind
        assert "network_data_format" in meta and "version" in meta
    seg = json.loads((PACKAGED_DIR / "segmentation" / "configs" / "metadata.json").read_text())
    assert "demo" in seg["intended_use"].lower() and seg["claraseg"]["demo_grade"] is True
    size = sum((PACKAGED_DIR / k / "models" / "model.pt").stat().st_size
               for k in KINDS if (PACKAGED_DIR / k / "models" / "model.pt").is_file())
    assert size < 10 * 2**20  # the committed weights stay small


def test_deepgrow3d_clicks_on_ct_kidney_and_phantom_liver(default_backend, ct_pair):
    from claraseg.io import make_phantom

    image, label = ct_pair
    names = {info.name: v for v, info in label.labels.items()}
    s = default_backend.open_session(image)
    dices = run_structure(s, "deepgrow3d", "deepgrow3d", label.array == names["kidney_right"], interactions=5).dice
    s.close()
    assert dices[-1] > 0.7, dices
    assert dices[-1] > dices[0]  # clicks improve the mask
    image, label = make_phantom(seed=5002, size_ijk=(96, 96, 48))
    s = default_backend.open_session(image)
    dices = run_structure(s, "deepgrow3d", "deepgrow3d", label.array == 1, interactions=5).dice
    s.close()
    assert dices[-1] > 0.75, dices


def test_dextr3d_on_fresh_phantom(default_backend):
    from claraseg.io import make_phantom

    image, label = make_phantom(seed=5001, size_ijk=(96, 96, 48))
    gt = label.array == 1
    s = default_backend.open_session(image)
    d = s.extreme_points("dextr3d", extreme_points(gt).tolist())
    s.close()
    assert dice(d.to_full(), gt) > 0.75


def test_deepgrow2d_on_a_ct_slice(default_backend, ct_pair):
    image, label = ct_pair
    names = {info.name: v for v, info in label.labels.items()}
    gt3 = label.array == names["spleen"]
    k = int(np.argmax(gt3.sum(axis=(1, 2))))
    gt = np.zeros_like(gt3)
    gt[k] = gt3[k]
    s = default_backend.open_session(image)
    dices = run_structure(s, "deepgrow2d", "deepgrow2d", gt, interactions=3, slice_axis=2).dice
    s.close()
    assert max(dices) > 0.75, dices


def test_segmentation_finds_the_liver(default_backend, ct_pair):
    image, label = ct_pair
    names = {info.name: v for v, info in label.labels.items()}
    s = default_backend.open_session(image)
    d = s.auto_segment("segmentation")
    s.close()
    liver = [v for v, n in d.labels.items() if n == "liver"][0]
    assert dice(d.to_full() == liver, label.array == names["liver"]) > 0.6


def _rough_phantom_liver(backend, seed: int):
    """A fresh phantom's liver eroded by 2 voxels (under-segmented, right extent) as a BoxMask, with a
    session on the phantom and the shipped DEXTR3D bundle, network and volume for re-fits:
    ``(session, gt, rough, mask, bundle, net, vol, inside)``, ``inside`` one [i, j, k] point deep in the liver."""
    from scipy import ndimage

    from claraseg.engine.masks import BoxMask
    from claraseg.io import make_phantom

    image, label = make_phantom(seed=seed, size_ijk=(96, 96, 48))
    gt = label.array == 1
    rough = ndimage.binary_erosion(gt, iterations=2)
    nz = np.argwhere(rough)
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    mask = BoxMask(image.size_ijk, lo[::-1], rough[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.uint8))
    s = backend.open_session(image)
    bundle = backend.registry.get("dextr3d")
    net = backend.registry.network("dextr3d", "cpu")
    inside = np.argwhere(ndimage.binary_erosion(gt, iterations=4))[0][::-1]
    return s, gt, rough, mask, bundle, net, s._volume(bundle), inside


def test_dextr_refit_improves_a_rough_mask_and_respects_clicks(default_backend):
    """The DeepGrow 3D shape re-fit (DEXTR3D on a result's extreme points) turns a rough mask of a fresh
    phantom's liver into a better one, and is refused when it would contradict a click or agree too little."""
    from claraseg.engine.runners import refit_with_dextr

    s, gt, rough, mask, bundle, net, vol, inside = _rough_phantom_liver(default_backend, 5002)
    none = np.zeros((0, 3), np.int64)
    found = refit_with_dextr(net, bundle.settings, vol, mask, inside[None], none, "cpu", 0.5)
    assert found is not None
    start, crop = found
    full = np.zeros(gt.shape, bool)
    full[tuple(slice(a, a + n) for a, n in zip(np.asarray(start)[::-1], crop.shape))] = crop > 0
    assert dice(full, gt) > dice(rough, gt) + 0.03
    # A background click deep inside: the re-fit (which reads clicks) leaves that voxel out, or is refused
    # for containing it; a stricter agreement than it reaches refuses it.
    carved = refit_with_dextr(net, bundle.settings, vol, mask, none, inside[None], "cpu", 0.5)
    if carved is not None:
        c = inside - np.asarray(carved[0])
        shape = np.asarray(carved[1].shape[::-1])
        assert not (np.all(c >= 0) and np.all(c < shape) and carved[1][c[2], c[1], c[0]])
    assert refit_with_dextr(net, bundle.settings, vol, mask, inside[None], none, "cpu", 1.0) is None
    s.close()


def test_refit_passes_refit_the_refit(default_backend, monkeypatch):
    """``shape_refit_passes`` 2 runs the re-fit again on the first re-fit (its extreme points, itself as the
    current mask): exactly two chained :func:`refit_with_dextr` calls, and on a rough phantom liver the
    second pass keeps the gain of the first."""
    from claraseg.engine.masks import BoxMask
    from claraseg.engine.runners import refit_with_dextr

    s, gt, rough, mask, bundle, net, vol, inside = _rough_phantom_liver(default_backend, 5001)
    size = s.image_size

    def full(found):  # a BoxMask, or a refit_with_dextr (start, crop), on the whole image
        m = found if isinstance(found, BoxMask) else BoxMask(size, *found)
        return m.region((0, 0, 0), size)

    fg, none = inside[None], np.zeros((0, 3), np.int64)
    first = refit_with_dextr(net, bundle.settings, vol, mask, fg, none, "cpu", 0.5)
    assert first is not None
    second = refit_with_dextr(net, bundle.settings, vol, BoxMask(size, *first), fg, none, "cpu", 0.5)
    assert second is not None
    settings = {"shape_refit_model": "dextr3d", "shape_refit_min_agreement": 0.5, "click_radius_mm": 0.0}
    one = s._refit(settings, mask, fg, none, (fg, none))
    two = s._refit({**settings, "shape_refit_passes": 2}, mask, fg, none, (fg, none))
    assert np.array_equal(full(one), full(first))
    assert np.array_equal(full(two), full(second))
    assert dice(full(two) > 0, gt) > dice(rough, gt) + 0.03
    # shape_refit_tta_flips: the passes before the last run with that many flips, the last with DEXTR3D's own.
    flat = refit_with_dextr(net, {**bundle.settings, "tta_flips": 1}, vol, mask, fg, none, "cpu", 0.5)
    assert flat is not None
    last = refit_with_dextr(net, bundle.settings, vol, BoxMask(size, *flat), fg, none, "cpu", 0.5)
    assert last is not None
    mixed = s._refit({**settings, "shape_refit_passes": 2, "shape_refit_tta_flips": 1}, mask, fg, none, (fg, none))
    assert np.array_equal(full(mixed), full(last))
    assert np.array_equal(full(s._refit({**settings, "shape_refit_tta_flips": 1}, mask, fg, none, (fg, none))), full(one))
    # shape_refit_threshold cuts the re-fit's probabilities instead of DEXTR3D's own threshold.
    low = refit_with_dextr(net, {**bundle.settings, "threshold": 0.3}, vol, mask, fg, none, "cpu", 0.5)
    assert low is not None
    assert np.array_equal(full(s._refit({**settings, "shape_refit_threshold": 0.3}, mask, fg, none, (fg, none))), full(low))
    assert np.count_nonzero(full(low)) > np.count_nonzero(full(first))
    # shape_refit_contradiction reaches every pass (what each mode does: test_refit_contradiction.py).
    from claraseg.engine import stages

    seen = []

    def spy(*args):
        seen.append(args[-1])
        return refit_with_dextr(*args)

    monkeypatch.setattr(stages, "refit_with_dextr", spy)
    s._refit({**settings, "shape_refit_passes": 2, "shape_refit_contradiction": "merge"}, mask, fg, none, (fg, none))
    s._refit(settings, mask, fg, none, (fg, none))
    assert seen == ["merge", "merge", "refuse"]
    s.close()


def test_clicks_correct_a_dextr3d_result_on_held_out_ct(default_backend, ct_pair):
    """The shipped DEXTR3D reads clicks: on the held-out CT iliopsoas (its weakest CT structure from the
    extreme points) ANCHORS clicks after the points raise Dice well beyond what honouring the 1 mm click
    balls alone could."""
    image, label = ct_pair
    names = {info.name: v for v, info in label.labels.items()}
    gt = label.array == names["iliopsoas_left"]
    s = default_backend.open_session(image)
    # The protocol's first interaction is the extreme points; its clicks then go to DEXTR3D itself.
    dices = run_structure(s, "dextr3d", "dextr3d", gt, interactions=6).dice
    s.close()
    start = dices[0]
    assert start > 0.6, start
    assert dices[-1] > start + 0.03, (start, dices)
