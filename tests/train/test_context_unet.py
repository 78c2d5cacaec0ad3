"""The DeepGrow 3D network with a context branch (``claraseg pretrain --network context``): built from a
trained UNet it computes what the UNet did, it learns to use the branch, the bundle keeps loading in the
engine's runtimes, and bad uses of ``--network`` are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from claraseg.errors import TrainingDataError
from claraseg.models.bundle import read_bundle, save_weights
from claraseg.models.nets import ContextUNet, unet_to_context_state
from claraseg.models.pretrain import _warm_state, set_network
from claraseg.models.testing import make_tiny_bundle

SHAPE = dict(spatial_dims=3, in_channels=4, out_channels=1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def _pair():
    torch.manual_seed(0)
    unet = UNet(**SHAPE).eval()
    ctx = ContextUNet(**SHAPE, context_features=8).eval()
    ctx.load_state_dict(unet_to_context_state(unet.state_dict(), ctx.state_dict()))
    return unet, ctx


@pytest.mark.parametrize("shape", [(1, 4, 32, 32, 32), (2, 4, 24, 24, 24), (1, 4, 20, 28, 24)])
def test_built_from_a_unet_it_computes_what_the_unet_did(shape):
    unet, ctx = _pair()
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(unet(x), ctx(x), atol=1e-4)


def test_training_reaches_the_context_branch():
    unet, ctx = _pair()
    ctx.train()
    opt = torch.optim.Adam(ctx.parameters(), lr=1e-2)
    x, y = torch.randn(2, 4, 24, 24, 24), (torch.rand(2, 1, 24, 24, 24) > 0.5).float()
    before = {k: v.clone() for k, v in ctx.state_dict().items() if k.startswith("context.")}
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(ctx(x), y).backward()
        opt.step()
    first = next(k for k in ctx.state_dict() if k.endswith("conv.weight") and not k.startswith("context."))
    assert ctx.state_dict()[first][:, 4:].abs().sum() > 0  # the first layer reads the context channels now
    changed = [k for k, v in before.items() if not torch.equal(v, ctx.state_dict()[k])]
    assert any(k.startswith("context.0.") for k in changed)  # and the branch itself learns


def test_a_bundle_switched_to_context_keeps_its_trained_behaviour(tmp_path):
    path = make_tiny_bundle("deepgrow3d", tmp_path / "deepgrow3d")
    unet = read_bundle(path).load_network()
    assert set_network(path, "deepgrow3d", "context") is True
    assert set_network(path, "deepgrow3d", "context") is False
    bundle = read_bundle(path)
    assert json.loads((path / "configs" / "inference.json").read_text())["network_def"]["_target_"] \
        == "claraseg.models.nets.ContextUNet"
    net = bundle.build_network()
    assert isinstance(net, ContextUNet)
    state = torch.load(bundle.weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict(_warm_state(net, state))
    save_weights(net, bundle.weights_path, half=False)
    loaded = read_bundle(path).load_network()
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        assert np.allclose(unet(x).numpy(), loaded(x).numpy(), atol=1e-4)
    # A second --continue keeps the trained branch (nothing is re-initialised).
    again = _warm_state(net, net.state_dict())
    assert all(torch.equal(again[k], v) for k, v in net.state_dict().items())


def test_the_context_network_runs_on_onnx_runtime_as_on_torch(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (the [runtimes] extra)")
    import onnxruntime as ort

    from claraseg.runtimes.export import export_onnx

    _, ctx = _pair()
    with torch.no_grad():
        for p in ctx.parameters():
            p.add_(0.01 * torch.randn_like(p))  # the context channels in use
    path = export_onnx(ctx, (4, 32, 32, 32), tmp_path / "ctx.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        ref = ctx(x).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize("kind,name,match", [("deepgrow3d", "resnet", "choose from"),
                                              ("deepgrow2d", "context", "only the 3D")])
def test_bad_network_options_are_refused(tmp_path, kind, name, match):
    path = make_tiny_bundle(kind, tmp_path / kind)
    with pytest.raises(TrainingDataError, match=match):
        set_network(path, kind, name)
