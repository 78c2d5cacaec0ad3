"""DEXTR3D taking correction clicks and the current mask: the widened network's warm start, its training
samples, the box its points set, and how a session routes clicks to it (tiny random-weight bundles:
mechanics, not quality; the quality test with the shipped weights is in test_default_models.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from claraseg.engine import LocalBackend
from claraseg.engine import session as session_module
from claraseg.engine import stages as stages_module
from claraseg.engine.runners import box_points
from claraseg.errors import ConfigError
from claraseg.guidance import extreme_points
from claraseg.models.bundle import read_bundle
from claraseg.models.pretrain import widen_input_channels
from claraseg.models.testing import make_tiny_bundle
from claraseg.models.training import (
    DEXTR_CLICK_CHANNELS,
    dextr_takes_clicks,
    make_sample,
    predictor,
    volume_from_images,
)


def _tiny_net(in_channels: int, seed: int):
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=1, channels=[4, 8], strides=[2],
                num_res_units=1).eval()


def test_widened_network_starts_out_computing_what_the_trained_one_did():
    old, new = _tiny_net(2, 0), _tiny_net(5, 1)
    new.load_state_dict(widen_input_channels(old.state_dict(), new.state_dict()))
    x = torch.rand(1, 2, 16, 16, 16)
    with torch.no_grad():
        want = old(x)
        same = new(torch.cat([x, torch.zeros(1, 3, 16, 16, 16)], dim=1))
        ones = new(torch.cat([x, torch.ones(1, 3, 16, 16, 16)], dim=1))
    assert torch.allclose(want, same, atol=1e-6)
    assert torch.allclose(want, ones, atol=1e-6)  # zero weights: the new channels change nothing yet ...
    first = new.model[0].conv.unit0.conv.weight
    assert float(first.detach()[:, 2:].abs().sum()) == 0.0
    new.train()
    new(torch.cat([x, torch.ones(1, 3, 16, 16, 16)], dim=1)).sum().backward()
    assert float(first.grad[:, 2:].abs().sum()) > 0  # ... but they are wired in and learn
    # Any other mismatch is still refused by load_state_dict.
    other = _tiny_net(2, 0)
    wider_out = {k: v for k, v in other.state_dict().items()}
    with pytest.raises(RuntimeError):
        _tiny_net(5, 2).load_state_dict(widen_input_channels(
            {k: torch.cat([v, v]) if v.ndim == 1 else v for k, v in wider_out.items()}, _tiny_net(5, 2).state_dict()))


@pytest.fixture(scope="module")
def phantom_volume():
    from claraseg.io import make_phantom
    from claraseg.models.defaults import INTENSITY

    image, label = make_phantom(seed=11, size_ijk=(64, 64, 32))
    return volume_from_images("phantom", image, label, INTENSITY, modality="CT")


def _settings(channels):
    from claraseg.models.defaults import SETTINGS

    s = json.loads(json.dumps(SETTINGS["dextr3d"]))
    s["channels"] = list(channels)
    return s


def test_dextr_samples_carry_clicks_and_a_mask_only_when_the_model_takes_them(phantom_volume):
    rng = np.random.default_rng(0)
    plain = _settings(["image", "extreme_points"])
    assert not dextr_takes_clicks(plain)
    st = phantom_volume.structures[0]
    x, y = make_sample("dextr3d", phantom_volume, st, plain, rng)
    assert x.shape[0] == 2 and y.shape[1:] == x.shape[1:]

    clicks = _settings(DEXTR_CLICK_CHANNELS)
    assert dextr_takes_clicks(clicks)
    net = _tiny_net(5, 0)
    run = predictor(net, "dextr3d")
    # No correction samples: the click and mask channels stay empty (a first segmentation from points).
    for _ in range(4):
        r = make_sample("dextr3d", phantom_volume, st, clicks, rng, run, {"p_correction": 0.0})
        if r is not None:
            assert r[0].shape[0] == 5 and float(r[0][2:].abs().sum()) == 0.0
    # Correction samples, with and without the network in the loop: clicks on the errors of a mask.
    seen = {"fg_or_bg": 0, "mask": 0}
    for loop in (0.0, 1.0):
        for _ in range(6):
            structure = phantom_volume.structures[int(rng.integers(len(phantom_volume.structures)))]
            r = make_sample("dextr3d", phantom_volume, structure, clicks, rng, run,
                            {"p_correction": 1.0, "p_model_in_loop": loop, "max_loop_clicks": 2})
            if r is None:
                continue
            x = r[0]
            assert x.shape[0] == 5
            seen["fg_or_bg"] += int(float(x[2:4].sum()) > 0)
            seen["mask"] += int(float(x[4].sum()) > 0)
            assert set(np.unique(x[4].numpy())) <= {0.0, 1.0}
    assert seen["fg_or_bg"] >= 8 and seen["mask"] >= 4, seen


def test_box_points_widen_only_for_a_foreground_click_outside():
    pts = np.array([[2, 5, 5], [9, 5, 5], [5, 1, 5], [5, 8, 5], [5, 5, 3], [5, 5, 7]])
    assert np.array_equal(box_points(pts, np.zeros((0, 3))), pts)
    assert np.array_equal(box_points(pts, [[4, 4, 4]]), pts)
    wider = box_points(pts, [[12, 5, 5]])
    assert wider.shape == (6, 3)
    assert wider[:, 0].max() == 12 and wider[:, 0].min() == 2
    assert wider[:, 1].min() == 1 and wider[:, 2].max() == 7


@pytest.fixture(scope="module")
def click_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dextr_clicks")
    make_tiny_bundle("deepgrow3d", root / "deepgrow3d")
    make_tiny_bundle("dextr3d", root / "dextr3d", settings={"channels": DEXTR_CLICK_CHANNELS, "click_radius_mm": 1.0})
    make_tiny_bundle("dextr3d", root / "dextr3d_points", settings={"correction_model": "deepgrow3d",
                                                                      "channels": ["image", "extreme_points"]})
    backend = LocalBackend(root, device="cpu", idle_timeout=None)
    yield backend
    backend.close()


class _Calls:
    """Counts the runner calls a click makes (the real runners still run)."""

    def __init__(self, monkeypatch):
        self.names: list[str] = []
        for module, name in ((session_module, "run_dextr"), (session_module, "run_deepgrow"),
                             (stages_module, "refit_with_dextr")):
            real = getattr(module, name)

            def spy(*args, _real=real, _name=name, **kwargs):
                self.names.append(_name)
                return _real(*args, **kwargs)

            monkeypatch.setattr(module, name, spy)


def test_a_session_routes_clicks_to_the_dextr_model_that_takes_them(click_models, small_phantom, monkeypatch):
    image, label = small_phantom
    gt = label.array == 1
    pts = extreme_points(gt)
    s = click_models.open_session(image)
    s.extreme_points("dextr3d", pts.tolist(), object_id="a")
    assert s.objects["a"].points == pts.tolist()
    inside = np.argwhere(gt)[len(np.argwhere(gt)) // 2][::-1]
    calls = _Calls(monkeypatch)
    s.click("dextr3d", foreground=[inside.tolist()], object_id="a")
    assert calls.names == ["run_dextr"]  # corrected by DEXTR3D itself, from the user's points
    m = s.mask("a")
    assert m[inside[2], inside[1], inside[0]] == 1  # the click holds (click_radius_mm)
    assert s.objects["a"].points == pts.tolist() and s.objects["a"].fg == [inside.tolist()]
    # A DeepGrow 3D click on the same object goes to the same corrector (its shape_refit_model, points known).
    calls.names.clear()
    s.click("deepgrow3d", background=[[0, 0, 0]], object_id="a")
    assert calls.names == ["run_dextr"]
    s.undo("a")
    s.undo("a")
    assert s.objects["a"].points == pts.tolist() and s.objects["a"].fg == []
    # A painted mask forgets the points: DeepGrow 3D then refines it (and DEXTR3D re-fits the result).
    s.set_mask("a", s.extreme_points("dextr3d", pts.tolist(), object_id="b"))
    assert s.objects["a"].points == []
    calls.names.clear()
    s.click("deepgrow3d", foreground=[inside.tolist()], object_id="a")
    refits = calls.names[1:]  # one re-fit pass or more (shape_refit_passes), until one is refused or converges
    assert calls.names[0] == "run_deepgrow" and refits and set(refits) == {"refit_with_dextr"}
    assert len(refits) <= int(click_models.registry.get("deepgrow3d").settings.get("shape_refit_passes", 1))
    # An empty object starts with the DeepGrow 3D network (then the re-fit, which takes the clicks too).
    calls.names.clear()
    s.click("deepgrow3d", foreground=[inside.tolist()], object_id="c")
    assert calls.names[0] == "run_deepgrow"
    # A DEXTR3D model without click channels hands its objects' clicks to its DeepGrow partner.
    s.extreme_points("dextr3d_points", pts.tolist(), object_id="d")
    calls.names.clear()
    s.click("dextr3d_points", foreground=[inside.tolist()], object_id="d")
    assert calls.names[0] == "run_deepgrow"
    s.close()


def test_bundle_checks_for_click_channels(tmp_path):
    path = make_tiny_bundle("dextr3d", tmp_path / "dextr3d", settings={"channels": DEXTR_CLICK_CHANNELS})
    assert dextr_takes_clicks(read_bundle(path).settings)
    meta_path = path / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["claraseg"]["channels"] = ["image", "extreme_points"]  # the network still has 5 input channels
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="in_channels is 5"):
        read_bundle(path)
    meta["claraseg"]["channels"] = ["image", "points", "clicks"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="channels of a dextr3d model"):
        read_bundle(path)


def test_dextr_margin_grows_with_the_box_when_margin_rel_is_set(tmp_path):
    from claraseg.guidance import box_roi
    from claraseg.models.training import dextr_margin

    assert np.allclose(dextr_margin({"margin_mm": 8.0}, [10, 20, 30]), 8.0)
    m = dextr_margin({"margin_mm": 8.0, "margin_rel": 0.1}, [10, 20, 30])
    assert np.allclose(m, [9.0, 10.0, 11.0])
    roi = box_roi([0, 0, 0], [10, 20, 30], [1.0, 1.0, 1.0], m, (48, 48, 48))
    assert np.allclose(roi.spacing * 47, [10 + 18, 20 + 20, 30 + 22])  # the box plus the margin per axis
    with pytest.raises(ConfigError, match="margin_rel must be a number >= 0"):
        make_tiny_bundle("dextr3d", tmp_path / "dextr3d", settings={"margin_rel": -0.1})
