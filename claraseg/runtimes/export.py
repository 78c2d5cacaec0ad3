"""A bundle's network exported for deployment (``claraseg export``).

``export_bundle`` writes a copy of the bundle (any version, ``name@vN``) with the network as
``models/model.onnx`` (ONNX, opset :data:`OPSET`) or ``models/model.ts`` (TorchScript), the files MONAI
bundles carry beside ``models/model.pt``. The batch axis is dynamic (test-time flips run as one batch); the
spatial axes are the interactive ROI of the bundle's ``claraseg.roi_size`` (DeepGrow 2D: the 2D slice).
``write_triton_model`` writes a Triton Inference Server model repository entry for the same file::

    <triton>/<name>/config.pbtxt      platform onnxruntime_onnx or pytorch_libtorch, tensors, max_batch_size
    <triton>/<name>/1/model.onnx      (or model.pt, the TorchScript file)

Every file is written beside its final place and renamed into it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.errors import ConfigError, UnknownModelError
from claraseg.models.bundle import METADATA, Bundle, write_json_atomic

FORMATS = ("onnx", "torchscript")
#: Where MONAI bundles keep an exported network.
MODEL_FILES = {"onnx": Path("models") / "model.onnx", "torchscript": Path("models") / "model.ts"}
#: ONNX opset of the exports (ONNX Runtime >= 1.12 and OpenVINO read it).
OPSET = 17
#: Tensor names of the ONNX export: the bundles' ``network_data_format`` input and output keys.
INPUT_NAME, OUTPUT_NAME = "image", "pred"
#: Triton's names for the tensors of a TorchScript model (``pytorch_libtorch`` has no names of its own).
TORCH_INPUT, TORCH_OUTPUT = "INPUT__0", "OUTPUT__0"
#: The interactive kinds (one network forward per pass, a fixed ROI); segmentation bundles run their
#: own sliding-window pipeline and are not exported.
EXPORTABLE_KINDS = ("deepgrow3d", "deepgrow2d", "dextr3d")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*(?:@v[0-9]{1,9})?$")


def check_model_name(name: str) -> str:
    """``name`` or ``name@vN`` as given, or :class:`UnknownModelError` for anything that is not a plain
    model name (a path, ``..``, a leading dot, separators)."""
    if not isinstance(name, str) or len(name) > 128 or not _MODEL_NAME.match(name):
        raise UnknownModelError(f"{name!r} is not a model name (letters, digits, _ - and single dots inside, "
                                "optionally @vN; no paths)")
    return name


def input_shape(bundle: Bundle) -> tuple[int, ...]:
    """The network's input without the batch axis, ``(C, k, j, i)`` (DeepGrow 2D ``(C, j, i)``), from the
    bundle's ``network_def.in_channels`` (or its ``claraseg.channels``) and ``claraseg.roi_size``."""
    if bundle.kind not in EXPORTABLE_KINDS:
        raise ConfigError(f"{bundle.name} is a {bundle.kind} model; only {', '.join(EXPORTABLE_KINDS)} "
                          "networks are exported (a segmentation bundle runs a sliding-window pipeline)")
    net_def = bundle.inference.get("network_def") or {}
    channels = net_def.get("in_channels")
    if not isinstance(channels, int):
        channels = len(bundle.settings.get("channels") or [])
    roi = [int(v) for v in bundle.settings["roi_size"]]
    if channels < 1:
        raise ConfigError(f"{bundle.path / METADATA}: cannot tell the network's input channels")
    spatial = roi[1::-1] if bundle.kind == "deepgrow2d" else roi[::-1]
    return (channels, *spatial)


def weights_digest(bundle: Bundle) -> str:
    """SHA-256 of the weights file and the network definition: what an exported file was made from."""
    h = hashlib.sha256()
    with open(bundle.weights_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps(bundle.inference.get("network_def"), sort_keys=True).encode())
    return h.hexdigest()


def _atomic_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def scalar_prelu_as_leaky_relu(model) -> int:
    """Rewrite, in the ONNX ``model`` (a ``ModelProto``), every ``PRelu`` whose slope is one constant number as
    ``LeakyRelu`` with that slope as ``alpha`` (the same function, float32 for float32: ``x`` where ``x >= 0``,
    else ``alpha * x``), and drop the slope tensors no node reads any more. ONNX Runtime runs PRelu as a
    broadcasting binary operator and LeakyRelu as a vectorised activation. Returns the number of nodes
    rewritten (0 for a graph that has none left)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and len(n.output) == 1}

    def scalar(name: str):
        if name in inits:
            a = numpy_helper.to_array(inits[name])
        elif name in consts:
            value = [a for a in consts[name].attribute if a.name == "value"]
            if not value:
                return None
            a = numpy_helper.to_array(value[0].t)
        else:
            return None
        return float(a.reshape(-1)[0]) if a.size == 1 and a.dtype == np.float32 else None

    nodes, rewritten = [], 0
    for node in graph.node:
        alpha = scalar(node.input[1]) if node.op_type == "PRelu" and len(node.input) == 2 else None
        if alpha is None:
            nodes.append(node)
            continue
        nodes.append(helper.make_node("LeakyRelu", [node.input[0]], list(node.output), name=node.name, alpha=alpha))
        rewritten += 1
    if not rewritten:
        return 0
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return rewritten


def onnx_bytes(net, shape: tuple[int, ...], metadata: dict[str, str] | None = None) -> bytes:
    """The ONNX model of a torch network taking ``[batch, *shape]`` float32 (batch axis dynamic), with
    ``metadata`` in its ``metadata_props``, its single-slope PReLUs as LeakyReLUs
    (:func:`scalar_prelu_as_leaky_relu`); checked by ``onnx.checker``."""
    import onnx
    import torch

    example = torch.zeros((1, *shape), dtype=torch.float32)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and trace notes
        try:
            torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except TypeError:  # a torch without the TorchScript-based exporter: the torch.export one
            buf = io.BytesIO()
            torch.onnx.export(net, (example,), buf, dynamo=True, opset_version=max(OPSET, 18),
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    model = onnx.load_from_string(buf.getvalue())
    scalar_prelu_as_leaky_relu(model)
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_onnx(net, shape: tuple[int, ...], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write :func:`onnx_bytes` to ``path`` atomically."""
    return _atomic_bytes(Path(path), onnx_bytes(net, shape, metadata))


def export_torchscript(net, shape: tuple[int, ...], path: str | os.PathLike,
                       metadata: dict[str, Any] | None = None) -> Path:
    """A traced TorchScript module of ``net`` (any batch size: the traced graph has no shape constants
    for it) at ``path``, written atomically; ``metadata`` as the extra file ``claraseg.json``."""
    import torch

    example = torch.zeros((2, *shape), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
    buf = io.BytesIO()
    torch.jit.save(traced, buf, _extra_files={"claraseg.json": json.dumps(metadata or {})})
    return _atomic_bytes(Path(path), buf.getvalue())


def _export_record(bundle: Bundle, fmt: str, shape: tuple[int, ...]) -> dict[str, Any]:
    import torch

    out_channels = (bundle.inference.get("network_def") or {}).get("out_channels", 1)
    return {"format": fmt, "file": MODEL_FILES[fmt].as_posix(), "weights_sha256": weights_digest(bundle),
            "torch": torch.__version__, **({"opset": OPSET} if fmt == "onnx" else {}),
            "input": {"name": INPUT_NAME if fmt == "onnx" else TORCH_INPUT, "shape": ["batch", *shape],
                      "dtype": "float32"},
            "output": {"name": OUTPUT_NAME if fmt == "onnx" else TORCH_OUTPUT,
                       "shape": ["batch", int(out_channels), *shape[1:]], "dtype": "float32",
                       "note": "logits; the probability is their sigmoid"}}


def _write_model_file(net, bundle: Bundle, fmt: str, path: Path, record: dict[str, Any]) -> Path:
    shape = input_shape(bundle)
    if fmt == "onnx":
        return export_onnx(net, shape, path, {"claraseg_model": bundle.name, "claraseg_version": bundle.version,
                                              "claraseg_weights_sha256": record["weights_sha256"]})
    return export_torchscript(net, shape, path, {"model": bundle.name, "version": bundle.version,
                                                 "weights_sha256": record["weights_sha256"]})


def export_bundle(registry, model: str, fmt: str, out: str | os.PathLike,
                  triton: str | os.PathLike | None = None, max_batch_size: int = 8) -> dict[str, Any]:
    """Export ``model`` (``name`` or ``name@vN`` of ``registry``) as ``fmt`` into a copy of its bundle in
    ``out`` (folder ``name`` or ``name@vN``, as in a models folder) and, with ``triton``, a Triton model
    repository entry. Returns what was written."""
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    base, n = registry.resolve(check_model_name(model))
    bundle = registry.get(f"{base}@v{n}")
    shape = input_shape(bundle)
    net = bundle.load_network("cpu")
    record = _export_record(bundle, fmt, shape)
    out = Path(out)
    folder = base if n == 1 else f"{base}@v{n}"
    final = out / folder
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".exporting-{folder}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle.path, tmp, ignore=shutil.ignore_patterns(".*"))
    for stale in MODEL_FILES.values():  # an export of earlier weights must not travel with these
        (tmp / stale).unlink(missing_ok=True)
    _write_model_file(net, bundle, fmt, tmp / MODEL_FILES[fmt], record)
    meta = json.loads((tmp / METADATA).read_text(encoding="utf-8"))
    meta.setdefault("claraseg", {})["export"] = record
    write_json_atomic(tmp / METADATA, meta)
    old = out / f".replaced-{folder}-{os.getpid()}-{threading.get_ident()}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    result = {"model": f"{base}@v{n}", "format": fmt, "bundle": str(final), "file": str(final / MODEL_FILES[fmt]),
              "input_shape": ["batch", *shape]}
    if triton is not None:
        result["triton"] = str(write_triton_model(bundle, fmt, triton, final / MODEL_FILES[fmt],
                                                  name=base if n == 1 else f"{base}_v{n}",
                                                  max_batch_size=max_batch_size))
    return result


def triton_config(name: str, fmt: str, shape: tuple[int, ...], out_channels: int, max_batch_size: int) -> str:
    """The ``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``) of an exported network."""
    platform = "onnxruntime_onnx" if fmt == "onnx" else "pytorch_libtorch"
    inp, outp = (INPUT_NAME, OUTPUT_NAME) if fmt == "onnx" else (TORCH_INPUT, TORCH_OUTPUT)
    dims_in = ", ".join(str(int(d)) for d in shape)
    dims_out = ", ".join(str(int(d)) for d in (out_channels, *shape[1:]))
    return (f'name: "{name}"\n'
            f'platform: "{platform}"\n'
            f"max_batch_size: {int(max_batch_size)}\n"
            f'input [\n  {{\n    name: "{inp}"\n    data_type: TYPE_FP32\n    dims: [ {dims_in} ]\n  }}\n]\n'
            f'output [\n  {{\n    name: "{outp}"\n    data_type: TYPE_FP32\n    dims: [ {dims_out} ]\n  }}\n]\n'
            "instance_group [\n  {\n    kind: KIND_AUTO\n    count: 1\n  }\n]\n")


def write_triton_model(bundle: Bundle, fmt: str, triton: str | os.PathLike, model_file: str | os.PathLike,
                       name: str, max_batch_size: int = 8, version: int = 1) -> Path:
    """``<triton>/<name>/config.pbtxt`` and ``<triton>/<name>/<version>/model.onnx|model.pt`` (a copy of
    ``model_file``); returns the model's folder."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name) or ".." in name:
        raise UnknownModelError(f"{name!r} is not a Triton model name")
    if not 1 <= int(max_batch_size) <= 1024:
        raise ConfigError(f"max_batch_size {max_batch_size} is not in 1..1024")
    shape = input_shape(bundle)
    out_channels = int((bundle.inference.get("network_def") or {}).get("out_channels", 1))
    folder = Path(triton) / name
    target = folder / str(int(version)) / ("model.onnx" if fmt == "onnx" else "model.pt")
    _atomic_bytes(target, Path(model_file).read_bytes())
    _atomic_bytes(folder / "config.pbtxt",
                  triton_config(name, fmt, shape, out_channels, max_batch_size).encode())
    return folder
