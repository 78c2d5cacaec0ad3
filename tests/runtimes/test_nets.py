"""The runtimes the engine runs bundles on (``claraseg.runtime``): ONNX Runtime and OpenVINO against the
PyTorch reference. Tolerances: the network's sigmoid probabilities within 1e-4 (ONNX Runtime) / 5e-4
(OpenVINO) of torch's; a whole click's mask (DeepGrow 3D with its DEXTR3D shape re-fit, DEXTR3D extreme
points, DeepGrow 2D) Dice >= 0.999 against torch's, on a crop of the sample CT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from claraseg.errors import ConfigError
from claraseg.models.bundle import read_bundle
from claraseg.models.registry import PACKAGED_DIR, ModelRegistry
from claraseg.runtimes import nets
from claraseg.runtimes.export import export_onnx, input_shape


def _with_runtime(root, runtime: str):
    """Copies of the packaged interactive bundles that ask for ``runtime``."""
    for name in ("deepgrow3d", "dextr3d", "deepgrow2d"):
        shutil.copytree(PACKAGED_DIR / name, root / name)
        meta_path = root / name / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["claraseg"]["runtime"] = runtime
        meta_path.write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def spleen_crop(ct_pair):
    """The sample CT and its spleen, cropped to a box around the spleen with a 6-voxel margin."""
    from claraseg.io.geometry import crop

    image, label = ct_pair
    spleen = {info.name: v for v, info in label.labels.items()}["spleen"]
    gt = label.array == spleen
    nz = np.argwhere(gt)
    lo, hi = np.maximum(nz.min(axis=0) - 6, 0), np.minimum(nz.max(axis=0) + 7, gt.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return crop(image, lo[::-1], hi[::-1]), gt[box]


def _dice(a, b) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _clicks(backend, crop, gt):
    """The masks of three interactions: a DeepGrow 3D click (with the shape re-fit), six extreme points
    (DEXTR3D) and a DeepGrow 2D click, each on a fresh object."""
    inside = np.argwhere(ndimage.binary_erosion(gt, iterations=2))
    centre = inside[len(inside) // 2][::-1].tolist()  # [i, j, k]
    nz = np.argwhere(gt)[:, ::-1]
    points = [nz[nz[:, a].argmin()].tolist() for a in range(3)] + [nz[nz[:, a].argmax()].tolist() for a in range(3)]
    s = backend.open_session(crop)
    out = {}
    for name, call in (("deepgrow3d", lambda: s.click("deepgrow3d", foreground=[centre], object_id="a")),
                       ("dextr3d", lambda: s.extreme_points("dextr3d", points, object_id="b")),
                       ("deepgrow2d", lambda: s.click("deepgrow2d", foreground=[centre], object_id="c",
                                                      slice_axis=2))):
        labelmap = np.zeros(crop.array.shape, np.uint8)
        call().paste(labelmap, value=1)
        out[name] = labelmap > 0
    s.close()
    return out


def test_onnxruntime_clicks_match_torch_and_repeat_exactly(tmp_path, spleen_crop):
    """The default bundles (which ask for ONNX Runtime) against copies of them set to torch."""
    from claraseg.engine import LocalBackend

    crop, gt = spleen_crop
    torch_backend = LocalBackend(_with_runtime(tmp_path / "torch", "torch"), device="cpu", idle_timeout=None)
    ort_backend = LocalBackend(PACKAGED_DIR, device="cpu", idle_timeout=None)
    try:
        for name in ("deepgrow3d", "dextr3d", "deepgrow2d"):
            net = ort_backend.registry.network(name, "cpu")
            assert isinstance(net, nets.OnnxRuntimeNet), name  # not silently on torch
            assert not isinstance(torch_backend.registry.network(name, "cpu"), nets.OnnxRuntimeNet)
            # The engine's thread count (torch's, 1 in the tests) is the ONNX Runtime session's.
            assert net.threads == torch.get_num_threads()
            assert net.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
        ref = _clicks(torch_backend, crop, gt)
        got = _clicks(ort_backend, crop, gt)
        again = _clicks(ort_backend, crop, gt)
    finally:
        torch_backend.close()
        ort_backend.close()
    for name in ref:
        # A real result (most of it in the spleen), not an empty or a stray one.
        assert np.count_nonzero(ref[name] & gt) > 0.5 * np.count_nonzero(ref[name]) > 0, name
        assert _dice(got[name], ref[name]) >= 0.999, (name, _dice(got[name], ref[name]))
        assert np.array_equal(got[name], again[name]), name  # identical run to run on the CPU


def test_openvino_agrees_with_torch(tiny_versions):
    bundle = ModelRegistry(tiny_versions).get("deepgrow3d@v2")
    module = bundle.load_network("cpu")
    net, diff = nets.checked_net("openvino", bundle, module, threads=1)
    assert isinstance(net, nets.OpenVinoNet), diff
    x = nets.agreement_input(bundle, batch=2)
    with torch.no_grad():
        assert nets.max_prob_diff(net(x), module(x)) <= nets.TOLERANCE["openvino"]
        # An input of another shape than the export's runs on torch.
        small = torch.rand(1, 4, 32, 32, 32)
        assert torch.equal(net(small), module(small))


def test_auto_measures_once_and_caches_its_choice(tiny_versions, runtime_cache):
    bundle = ModelRegistry(tiny_versions).get("deepgrow2d")
    module = bundle.load_network("cpu")
    runtime, record = nets.choose_runtime(bundle, module, threads=1, repeats=2)
    assert runtime in ("torch", "onnxruntime", "openvino") and runtime == min(record["median_ms"],
                                                                               key=record["median_ms"].get)
    assert {"torch", "onnxruntime", "openvino"} <= set(record["median_ms"]) and not record["refused"]
    cached = json.loads((runtime_cache / "runtime_choice.json").read_text())
    assert [v["runtime"] for v in cached.values()] == [runtime]
    again, record2 = nets.choose_runtime(bundle, module, threads=1)
    assert (again, record2["date"]) == (runtime, record["date"])  # read back, not measured again
    # The engine's entry point gives the chosen runtime's object.
    auto = read_bundle(bundle.path, name="deepgrow2d")
    auto.settings["runtime"] = "auto"
    got = nets.runtime_net(auto, module, "cpu")
    assert getattr(got, "runtime", "torch") == runtime


def test_shipped_onnx_is_used_only_for_its_own_weights(tiny_versions, tmp_path):
    reg = ModelRegistry(tiny_versions)
    v1, v2 = reg.get("deepgrow3d@v1"), reg.get("deepgrow3d@v2")
    # A bundle folder carrying an export of v1's weights beside v2's weights (a fine-tune copied its parent).
    folder = tmp_path / "deepgrow3d"
    shutil.copytree(v2.path, folder)
    export_onnx(v1.load_network(), input_shape(v1), folder / "models" / "model.onnx",
                {"claraseg_weights_sha256": nets.weights_digest(v1)})
    stale = read_bundle(folder)
    path = nets.onnx_path(stale)
    assert path != folder / "models" / "model.onnx" and path.parent == nets.cache_dir() / "onnx"
    # The same file made from the bundle's own weights is used as shipped.
    export_onnx(stale.load_network(), input_shape(stale), folder / "models" / "model.onnx",
                {"claraseg_weights_sha256": nets.weights_digest(stale)})
    assert nets.onnx_path(stale) == folder / "models" / "model.onnx"


def test_a_runtime_that_disagrees_falls_back_to_torch(tiny_versions, monkeypatch, caplog):
    bundle = read_bundle(ModelRegistry(tiny_versions).get("deepgrow3d@v1").path, name="deepgrow3d")
    bundle.settings["runtime"] = "onnxruntime"
    module = bundle.load_network("cpu")
    assert isinstance(nets.runtime_net(bundle, module, "cpu"), nets.OnnxRuntimeNet)
    # The agreement was recorded for this file, and is read back at the next load instead of measured.
    records = list((nets.cache_dir() / "checked").glob("*-onnxruntime*.json"))
    assert records and all(json.loads(r.read_text())["max_prob_diff"] <= 1e-4 for r in records)
    monkeypatch.setattr(nets, "max_prob_diff", lambda a, b: 1.0)
    assert isinstance(nets.runtime_net(bundle, module, "cpu"), nets.OnnxRuntimeNet)
    monkeypatch.undo()
    monkeypatch.setitem(nets.TOLERANCE, "onnxruntime", -1.0)  # nothing can agree within a negative tolerance
    with caplog.at_level("WARNING"):
        assert nets.runtime_net(bundle, module, "cpu") is module
    assert "disagrees with torch" in caplog.text
    # The environment overrides every bundle's setting; an unknown runtime is refused by name.
    monkeypatch.setenv("CLARASEG_RUNTIME", "torch")
    assert nets.bundle_runtime(bundle) == "torch"
    monkeypatch.setenv("CLARASEG_RUNTIME", "tensorrt")
    with pytest.raises(ConfigError, match="tensorrt"):
        nets.runtime_net(bundle, module, "cpu")


@pytest.mark.parametrize(("key", "value"), [("runtime", "tensorrt"), ("runtime", 1), ("amp_dtype", "float8")])
def test_schema_refuses_unknown_runtimes_and_amp_types(tiny_versions, tmp_path, key, value):
    folder = tmp_path / "deepgrow3d"
    shutil.copytree(ModelRegistry(tiny_versions).get("deepgrow3d@v1").path, folder)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    meta["claraseg"][key] = value
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=f"claraseg.{key} must be"):
        read_bundle(folder)


def test_cache_keeps_the_most_recently_used_exports(tmp_path):
    import os
    import time

    for n in range(5):
        (tmp_path / f"m{n}.onnx").write_bytes(b"x")
        t = time.time() - 100 + n
        os.utime(tmp_path / f"m{n}.onnx", (t, t))
    (tmp_path / "other.json").write_text("{}")
    gone = nets.prune_cache(tmp_path, 2)
    assert sorted(p.name for p in gone) == ["m0.onnx", "m1.onnx", "m2.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m3.onnx", "m4.onnx", "other.json"]


def test_auto_times_torch_as_the_engine_runs_it(tiny_versions, runtime_cache, monkeypatch):
    """At batch 1 the engine's forward runs a torch network through oneDNN (claraseg.engine.onednn), so
    ``auto`` must time that network, not the plain module PyTorch sends to its slow batch-1 kernel."""
    from claraseg.engine import onednn

    timed = []
    real_median = nets._median_ms

    def median(net, x, repeats):
        timed.append(net)
        return real_median(net, x, repeats)

    monkeypatch.setattr(nets, "_median_ms", median)
    bundle = ModelRegistry(tiny_versions).get("deepgrow3d")
    assert int(bundle.settings.get("tta_flips", 1)) == 1
    module = bundle.load_network("cpu")
    nets.choose_runtime(bundle, module, threads=1, repeats=1)
    torch_timed = [n for n in timed if not hasattr(n, "runtime")]
    assert torch_timed and all(n is onednn.onednn_network(module) for n in torch_timed)
    assert onednn.onednn_network(module) is not module  # the tiny network has convolutions to convert
