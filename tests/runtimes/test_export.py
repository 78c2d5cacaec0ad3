"""``claraseg export``: ONNX and TorchScript files in a bundle copy, a Triton model repository, fine-tuned
versions, refused names. Tolerance of the exported networks against PyTorch: max abs difference of the
sigmoid probabilities <= 1e-4 (ONNX Runtime) and <= 1e-6 (TorchScript, the same kernels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from claraseg.errors import ConfigError, UnknownModelError
from claraseg.models.bundle import read_bundle
from claraseg.models.registry import ModelRegistry
from claraseg.runtimes.export import check_model_name, export_bundle


def _triton_model_config():
    """Triton's ``ModelConfig`` message (the fields the exporter writes, with their proto types and
    enums), built with protobuf so that ``config.pbtxt`` is parsed by protobuf's own text-format parser."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="rt_model_config.proto", package="inference", syntax="proto3")
    dt = fdp.enum_type.add(name="DataType")
    for i, n in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64",
                           "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32",
                           "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        dt.value.add(name=n, number=i)

    def field(msg, name, number, typ, label=F.LABEL_OPTIONAL, type_name=None):
        f = msg.field.add(name=name, number=number, type=typ, label=label)
        if type_name:
            f.type_name = type_name

    for msg_name in ("ModelInput", "ModelOutput"):
        m = fdp.message_type.add(name=msg_name)
        field(m, "name", 1, F.TYPE_STRING)
        field(m, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
        field(m, "dims", 3, F.TYPE_INT64, F.LABEL_REPEATED)
    g = fdp.message_type.add(name="ModelInstanceGroup")
    kind = g.enum_type.add(name="Kind")
    for i, n in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=n, number=i)
    field(g, "name", 1, F.TYPE_STRING)
    field(g, "count", 2, F.TYPE_INT32)
    field(g, "kind", 4, F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.Kind")
    c = fdp.message_type.add(name="ModelConfig")
    field(c, "name", 1, F.TYPE_STRING)
    field(c, "platform", 2, F.TYPE_STRING)
    field(c, "max_batch_size", 4, F.TYPE_INT32)
    field(c, "input", 5, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".inference.ModelInput")
    field(c, "output", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".inference.ModelOutput")
    field(c, "instance_group", 7, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".inference.ModelInstanceGroup")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _parse_pbtxt(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), _triton_model_config()())


def _probs(logits) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def test_onnx_export_of_a_fine_tuned_version_runs_in_onnxruntime_and_triton_config_parses(tiny_versions, tmp_path):
    import onnxruntime as ort

    reg = ModelRegistry(tiny_versions)
    result = export_bundle(reg, "deepgrow3d@v2", "onnx", tmp_path / "out", triton=tmp_path / "triton")
    bundle_dir = tmp_path / "out" / "deepgrow3d@v2"
    assert result["bundle"] == str(bundle_dir) and result["input_shape"] == ["batch", 4, 64, 64, 64]
    # The copy is a bundle the registry reads (as the same version), with the weights and the export record.
    copy = read_bundle(bundle_dir, name="deepgrow3d")
    assert copy.version == "0.2.0" and (bundle_dir / "models" / "model.pt").is_file()
    record = copy.settings["export"]
    assert record["format"] == "onnx" and record["file"] == "models/model.onnx" and record["opset"] == 17
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]

    net = reg.network("deepgrow3d@v2")
    x = torch.rand(3, 4, 64, 64, 64, generator=torch.Generator().manual_seed(1))  # batch 3: the axis is dynamic
    x[:, 1:] = (x[:, 1:] > 0.95).float()
    with torch.no_grad():
        ref = _probs(net(x).numpy())
        v1 = _probs(reg.network("deepgrow3d@v1")(x).numpy())
    sess = ort.InferenceSession(str(bundle_dir / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"] and [o.name for o in sess.get_outputs()] == ["pred"]
    assert sess.get_inputs()[0].shape == ["batch", 4, 64, 64, 64]
    props = sess.get_modelmeta().custom_metadata_map
    assert props["claraseg_weights_sha256"] == record["weights_sha256"]
    got = _probs(sess.run(None, {"image": x.numpy()})[0])
    assert got.shape == (3, 1, 64, 64, 64)
    assert np.abs(got - ref).max() <= 1e-4
    assert np.abs(got - v1).max() > 1e-3  # the export is of v2's weights, not v1's

    triton = tmp_path / "triton" / "deepgrow3d_v2"
    assert result["triton"] == str(triton)
    cfg = _parse_pbtxt(triton / "config.pbtxt")
    assert cfg.name == "deepgrow3d_v2" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("image", [4, 64, 64, 64])]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("pred", [1, 64, 64, 64])]
    assert cfg.input[0].data_type == cfg.output[0].data_type == 11  # TYPE_FP32
    assert (triton / "1" / "model.onnx").read_bytes() == (bundle_dir / "models" / "model.onnx").read_bytes()


def test_torchscript_export_of_deepgrow2d_and_its_triton_entry(tiny_versions, tmp_path):
    from claraseg.cli import main

    # Through the command line, into a folder that already holds an earlier export (replaced whole).
    (tmp_path / "out" / "deepgrow2d").mkdir(parents=True)
    (tmp_path / "out" / "deepgrow2d" / "stale.txt").write_text("x")
    assert main(["export", "deepgrow2d", "--format", "torchscript", "--out", str(tmp_path / "out"),
                 "--triton", str(tmp_path / "triton"), "--max-batch-size", "4", "--models", str(tiny_versions)]) == 0
    bundle_dir = tmp_path / "out" / "deepgrow2d"
    assert not (bundle_dir / "stale.txt").exists() and not (bundle_dir / "models" / "model.onnx").exists()
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    assert meta["claraseg"]["export"]["input"]["shape"] == ["batch", 4, 128, 128]

    extra = {"claraseg.json": ""}
    ts = torch.jit.load(str(bundle_dir / "models" / "model.ts"), _extra_files=extra)
    assert json.loads(extra["claraseg.json"])["model"] == "deepgrow2d"
    net = ModelRegistry(tiny_versions).network("deepgrow2d")
    for batch in (1, 4):
        x = torch.rand(batch, 4, 128, 128, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert np.abs(_probs(ts(x).numpy()) - _probs(net(x).numpy())).max() <= 1e-6
    cfg = _parse_pbtxt(tmp_path / "triton" / "deepgrow2d" / "config.pbtxt")
    assert cfg.platform == "pytorch_libtorch" and cfg.max_batch_size == 4
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("INPUT__0", [4, 128, 128])]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("OUTPUT__0", [1, 128, 128])]
    assert (tmp_path / "triton" / "deepgrow2d" / "1" / "model.pt").is_file()


@pytest.mark.parametrize("name", ["../deepgrow3d", "deepgrow3d/../x", "/etc/passwd", ".hidden", "a..b", "dg@v",
                                  "dg@v1/x", "dg\\x", "", "x" * 200])
def test_export_refuses_names_that_are_not_model_names(name):
    with pytest.raises(UnknownModelError):
        check_model_name(name)


def test_export_refuses_unknown_models_segmentation_and_bad_formats(tiny_versions, tmp_path):
    from claraseg.cli import main

    reg = ModelRegistry(tiny_versions)
    with pytest.raises(UnknownModelError):
        export_bundle(reg, "deepgrow3d@v9", "onnx", tmp_path)
    with pytest.raises(UnknownModelError):
        export_bundle(reg, "../deepgrow3d", "onnx", tmp_path)
    with pytest.raises(ConfigError, match="segmentation model"):
        export_bundle(reg, "segmentation", "onnx", tmp_path)
    with pytest.raises(ConfigError, match="format"):
        export_bundle(reg, "deepgrow3d", "tensorrt", tmp_path)
    assert main(["export", "../../etc", "--out", str(tmp_path), "--models", str(tiny_versions)]) == 1
    assert not any(tmp_path.iterdir())
