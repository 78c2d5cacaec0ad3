"""The CUDA path: autocast of the bundle's ``amp_dtype`` around the network (bf16 / fp16), against float32.
Needs a CUDA device (skipped by name without one); the dtype setting itself is checked everywhere."""

from __future__ import annotations

import pytest
import torch

from claraseg.errors import ConfigError
from claraseg.models.registry import PACKAGED_DIR, ModelRegistry
from claraseg.runtimes import nets

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_amp_dtype_is_checked():
    with pytest.raises(ConfigError, match="amp_dtype"):
        nets.AutocastNet(torch.nn.Identity(), "float8")


@needs_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_autocast_agrees_with_float32(dtype):
    bundle = ModelRegistry(PACKAGED_DIR).get("deepgrow3d")
    module = bundle.load_network("cuda")
    bundle.settings["amp_dtype"] = dtype
    net = nets.runtime_net(bundle, module, "cuda")
    assert isinstance(net, nets.AutocastNet) and net.dtype == getattr(torch, dtype)
    x = nets.agreement_input(bundle, batch=2).cuda()
    with torch.no_grad():
        ref, got = torch.sigmoid(module(x)), torch.sigmoid(net(x).float())
    assert float((ref - got).abs().max()) <= 0.05
    ref_mask, got_mask = ref > 0.5, got > 0.5
    dice = 2 * (ref_mask & got_mask).sum() / max(1, int(ref_mask.sum() + got_mask.sum()))
    assert float(dice) >= 0.99


@needs_cuda
def test_cuda_clicks_repeat_and_run_on_the_backend_device(phantom_pair):
    from claraseg.engine import LocalBackend

    image, label = phantom_pair
    backend = LocalBackend(PACKAGED_DIR, device="cuda", idle_timeout=None)
    try:
        assert isinstance(backend.registry.network("deepgrow3d", backend.device), nets.AutocastNet)
        import numpy as np

        centre = np.argwhere(label.array == 1).mean(axis=0).round().astype(int)[::-1].tolist()
        s = backend.open_session(image)
        a = s.click("deepgrow3d", foreground=[centre], object_id="a").to_full()
        b = s.click("deepgrow3d", foreground=[centre], object_id="b").to_full()
        s.close()
    finally:
        backend.close()
    assert a.any() and (a == b).all()
