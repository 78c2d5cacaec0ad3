"""Single-slope PReLUs of an exported network become LeakyReLUs (``scalar_prelu_as_leaky_relu``): ONNX
Runtime's outputs stay bit for bit those of the original graph, per-channel PReLUs are left alone, a
graph exported before the rewrite gets it when ONNX Runtime loads it, and the slopes no node reads any
more are gone."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import torch

from claraseg.runtimes.export import onnx_bytes, scalar_prelu_as_leaky_relu
from claraseg.runtimes.nets import OnnxRuntimeNet


class _Net(torch.nn.Module):
    """Conv -> instance norm -> PReLU blocks with single slopes of either sign and above 1, one per-channel PReLU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv3d(3, 8, 3, padding=1)
        self.n1 = torch.nn.InstanceNorm3d(8, affine=True)
        self.a1 = torch.nn.PReLU()
        self.c2 = torch.nn.Conv3d(8, 8, 3, padding=1)
        self.a2 = torch.nn.PReLU(8)
        self.c3 = torch.nn.Conv3d(8, 1, 1)
        self.a3 = torch.nn.PReLU()
        self.a4 = torch.nn.PReLU()
        with torch.no_grad():
            self.a1.weight.fill_(-0.37)
            self.a2.weight.copy_(torch.linspace(-1.0, 2.0, 8))
            self.a3.weight.fill_(2.65)
            self.a4.weight.fill_(0.02)

    def forward(self, x):
        y = self.a1(self.n1(self.c1(x)))
        y = self.a2(self.c2(y)) + y
        return self.a4(self.a3(self.c3(y)))


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _session(data):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def test_single_slope_prelus_become_leaky_relus_with_the_same_outputs(tmp_path):
    net = _Net().eval()
    exported = onnx.load_from_string(onnx_bytes(net, (3, 10, 12, 9)))
    assert _ops(exported).count("LeakyRelu") == 3 and _ops(exported).count("PRelu") == 1  # per-channel kept
    assert scalar_prelu_as_leaky_relu(exported) == 0  # nothing left to rewrite

    # The plain export (PReLU everywhere), as files written before the rewrite are.
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 10, 12, 9),), buf, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["pred"], dynamic_axes={"image": {0: "batch"}})
    plain = onnx.load_from_string(buf.getvalue())
    assert _ops(plain).count("PRelu") == 4
    names_before = {t.name for t in plain.graph.initializer}
    rewritten = onnx.load_from_string(buf.getvalue())
    assert scalar_prelu_as_leaky_relu(rewritten) == 3
    onnx.checker.check_model(rewritten)
    used = {i for n in rewritten.graph.node for i in n.input}
    assert all(t.name in used for t in rewritten.graph.initializer)
    assert len(rewritten.graph.initializer) < len(names_before)

    x = np.random.default_rng(1).normal(size=(3, 3, 10, 12, 9)).astype(np.float32)
    a = _session(plain.SerializeToString()).run(None, {"image": x})[0]
    b = _session(rewritten.SerializeToString()).run(None, {"image": x})[0]
    c = _session(exported.SerializeToString()).run(None, {"image": x})[0]
    assert (a < 0).any() and (a > 0).any()
    assert np.array_equal(a, b) and np.array_equal(a, c)
    with torch.no_grad():
        assert float(np.abs(a - net(torch.from_numpy(x)).numpy()).max()) < 1e-4

    # A file with the old graph is rewritten when ONNX Runtime loads it.
    path = tmp_path / "old.onnx"
    path.write_bytes(buf.getvalue())
    loaded = OnnxRuntimeNet(path, net, (3, 10, 12, 9), threads=1)
    assert loaded.rewritten == 3
    assert np.array_equal(loaded(torch.from_numpy(x)).numpy(), a)
