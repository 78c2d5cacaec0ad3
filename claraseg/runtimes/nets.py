"""Runtime objects the engine calls in place of a bundle's torch network: ``net(x) -> logits``, a float32
``[B, C, *spatial]`` CPU tensor in, a float32 tensor out, as :func:`claraseg.engine.runners.forward` calls
the module.

Which one a bundle gets is its ``claraseg.runtime`` setting (``$CLARASEG_RUNTIME`` overrides every
bundle), applied by :func:`runtime_net` where the registry loads the network:

- ``torch`` (the default and the reference): the module itself; on CUDA wrapped in autocast with the
  bundle's ``amp_dtype`` (``float16`` or ``bfloat16``);
- ``onnxruntime`` / ``openvino``: the network exported to ONNX (the bundle's own ``models/model.onnx``
  when it was made from these weights, else an export cached in :func:`cache_dir` under the weights'
  hash), run on CPU with the engine's torch thread count;
- ``auto``: whichever of those is fastest on this machine, timed once at load on the bundle's input
  (the choice is cached per weights, thread count and CPU).

A runtime is accepted only when its probabilities agree with torch's on a fixed input within
:data:`TOLERANCE` (measured once per ONNX file and versions, recorded in the cache); otherwise, and when its package is missing or the device is CUDA, the bundle runs on
torch (with one warning). An input of another shape than the export's runs on torch.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.errors import ConfigError
from claraseg.models.bundle import Bundle, write_json_atomic
from claraseg.runtimes.export import EXPORTABLE_KINDS, MODEL_FILES, input_shape, weights_digest

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino", "auto")
#: Largest accepted difference of sigmoid probabilities from torch's on the agreement input, per runtime.
TOLERANCE = {"onnxruntime": 1e-4, "openvino": 5e-4}
AMP_DTYPES = ("float16", "bfloat16")
_warned: set[str] = set()
_lock = threading.Lock()


def _warn_once(message: str) -> None:
    with _lock:
        if message in _warned:
            return
        _warned.add(message)
    log.warning(message)


def cache_dir() -> Path:
    """``$CLARASEG_CACHE``, else ``$XDG_CACHE_HOME/claraseg``, else ``~/.cache/claraseg``."""
    if os.environ.get("CLARASEG_CACHE"):
        return Path(os.environ["CLARASEG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "claraseg"


def available(runtime: str) -> bool:
    """Whether the package of ``runtime`` imports here."""
    import importlib.util

    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}.get(runtime)
    return bool(module) and importlib.util.find_spec(module) is not None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _ExportedNet(abc.ABC):
    """A runtime over an ONNX file; inputs of another shape, or not on the CPU, go to ``module``. A
    subclass runs the file (``_run``)."""

    runtime = "?"

    def __init__(self, onnx_path: str | os.PathLike, module, shape: tuple[int, ...], threads: int):
        self.path = Path(onnx_path)
        self.module = module
        self.shape = tuple(int(v) for v in shape)
        self.threads = int(threads)

    def __call__(self, x):
        import torch

        if tuple(x.shape[1:]) != self.shape or x.device.type != "cpu":
            return self.module(x)
        out = self._run(np.ascontiguousarray(x.detach().to(torch.float32).numpy()))
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    @abc.abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray:
        """The network's output for the float32 batch ``x``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, threads={self.threads})"


class OnnxRuntimeNet(_ExportedNet):
    """ONNX Runtime's CPU execution provider, ``threads`` intra-op threads, no spinning between runs (the
    machine's other work keeps its cores), on the file's graph with its single-slope PReLUs as LeakyReLUs
    (:func:`~claraseg.runtimes.export.scalar_prelu_as_leaky_relu`: the same outputs, faster; files exported
    before that rewrite get it here). ``InferenceSession.run`` is thread-safe."""

    runtime = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, module, shape: tuple[int, ...], threads: int):
        import onnx
        import onnxruntime as ort

        from claraseg.runtimes.export import scalar_prelu_as_leaky_relu

        super().__init__(onnx_path, module, shape, threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        model = onnx.load(str(onnx_path))
        #: Nodes rewritten at load (a file exported before the rewrite): its agreement is checked anew.
        self.rewritten = scalar_prelu_as_leaky_relu(model)
        source = model.SerializeToString() if self.rewritten else str(onnx_path)
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: x})[0]


class OpenVinoNet(_ExportedNet):
    """OpenVINO's CPU plugin at float32 precision (not its bf16 default on CPUs that have it), latency
    hint, ``threads`` inference threads; one infer request per calling thread."""

    runtime = "openvino"

    def __init__(self, onnx_path: str | os.PathLike, module, shape: tuple[int, ...], threads: int):
        import openvino as ov

        super().__init__(onnx_path, module, shape, threads)
        core = ov.Core()
        self.compiled = core.compile_model(str(onnx_path), "CPU", {
            "INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY"})
        self._local = threading.local()

    def _run(self, x: np.ndarray) -> np.ndarray:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req.infer({0: x})[self.compiled.output(0)].copy()


class AutocastNet:
    """A torch module on CUDA run under autocast of ``dtype`` (``float16`` or ``bfloat16``); the engine's
    own autocast (float16) around the call is overridden by this inner one."""

    runtime = "torch"

    def __init__(self, module, dtype: str = "float16"):
        import torch

        if dtype not in AMP_DTYPES:
            raise ConfigError(f"amp_dtype {dtype!r} is not one of {AMP_DTYPES}")
        self.module = module
        self.dtype = getattr(torch, dtype)

    def __call__(self, x):
        import torch

        with torch.autocast("cuda", dtype=self.dtype, enabled=x.device.type == "cuda"):
            return self.module(x)


def onnx_path(bundle: Bundle, module=None) -> Path:
    """An ONNX file of the bundle's network and current weights: the bundle's ``models/model.onnx`` when
    its ``claraseg_weights_sha256`` is these weights', else ``<cache>/onnx/<name>-<hash>.onnx``, exported
    from ``module`` (or the bundle's weights) when missing and written atomically."""
    import onnx
    import torch

    from claraseg.runtimes.export import OPSET, export_onnx

    digest = weights_digest(bundle)
    shipped = bundle.path / MODEL_FILES["onnx"]
    if shipped.is_file():
        try:
            props = {p.key: p.value for p in onnx.load(str(shipped), load_external_data=False).metadata_props}
        except Exception as e:  # an unreadable shipped file: export our own
            props = {}
            _warn_once(f"{shipped}: unreadable ONNX file ({type(e).__name__}); exporting from the weights")
        if props.get("claraseg_weights_sha256") == digest:
            return shipped
    shape = input_shape(bundle)
    # "lrelu": exported with the single-slope PReLUs as LeakyReLUs (files without it are rewritten at load).
    key = (f"{digest[:20]}-{'x'.join(map(str, shape))}-opset{OPSET}-lrelu-"
           f"torch{torch.__version__.split('+')[0]}")
    path = cache_dir() / "onnx" / f"{bundle.name}-{key}.onnx"
    if path.is_file():
        try:
            os.utime(path)  # recently used: kept by the pruning below
        except OSError:
            pass
        return path
    net = module if module is not None else bundle.load_network("cpu")
    export_onnx(net, shape, path, {"claraseg_model": bundle.name, "claraseg_weights_sha256": digest})
    prune_cache(path.parent, CACHE_KEEP)
    return path


#: Exported files kept in ``<cache>/onnx`` (the most recently used; fine-tune validations export every
#: checkpoint they run).
CACHE_KEEP = 48


def prune_cache(folder: Path, keep: int, pattern: str = "*.onnx") -> list[Path]:
    """Delete all but the ``keep`` most recently used files of ``folder`` matching ``pattern``; returns
    what was deleted."""
    try:
        files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    gone = []
    for old in files[keep:]:
        try:
            old.unlink()
            gone.append(old)
        except OSError:
            pass
    return gone


def make_net(runtime: str, bundle: Bundle, module, threads: int):
    """The runtime object ``runtime`` (``torch``, ``onnxruntime`` or ``openvino``) of a bundle's CPU network."""
    if runtime == "torch":
        return module
    cls = {"onnxruntime": OnnxRuntimeNet, "openvino": OpenVinoNet}.get(runtime)
    if cls is None:
        raise ConfigError(f"runtime {runtime!r} is not one of {RUNTIMES[:-1]}")
    return cls(onnx_path(bundle, module), module, input_shape(bundle), threads)


def agreement_input(bundle: Bundle, batch: int = 1):
    """A fixed input for comparing runtimes: a smooth random image in [0, 1] and sparse 0/1 guidance
    channels (seeded, independent of the torch RNG state)."""
    import torch

    shape = input_shape(bundle)
    rng = np.random.default_rng(20)
    x = rng.random((batch, *shape), dtype=np.float32)
    x[:, 1:] = (x[:, 1:] > 0.97).astype(np.float32)
    return torch.from_numpy(x)


def max_prob_diff(a, b) -> float:
    """Largest absolute difference of the sigmoid probabilities of two logit tensors."""
    import torch

    return float((torch.sigmoid(a.float()) - torch.sigmoid(b.float())).abs().max())


def _median_ms(net, x, repeats: int) -> float:
    import torch

    times = []
    with torch.no_grad():
        net(x)  # warm-up (allocations, kernel selection)
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    return round(1000.0 * float(np.median(times)), 2)


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _agreement_record(net: _ExportedNet, runtime: str) -> Path:
    """Where the agreement of ``runtime`` with torch on this exact ONNX file is recorded (the file's hash:
    the file carries the weights; whether its graph was rewritten at load; torch's and the runtime's versions)."""
    import hashlib

    import torch

    digest = hashlib.sha256(net.path.read_bytes()).hexdigest()[:24]
    graph = "-leakyrelu" if getattr(net, "rewritten", 0) else ""
    return cache_dir() / "checked" / (f"{digest}{graph}-{runtime}{_package_version(runtime)}-"
                                      f"torch{torch.__version__.split('+')[0]}.json")


def checked_net(runtime: str, bundle: Bundle, module, threads: int, reference=None):
    """``(net, max_prob_diff)`` of :func:`make_net`, or ``(None, reason)`` when the runtime is missing,
    fails, or disagrees with torch beyond :data:`TOLERANCE` on :func:`agreement_input`. An agreement
    already measured on the same file and versions is read back from the cache instead of measured."""
    import torch

    if runtime == "torch":
        return module, 0.0
    if not available(runtime):
        return None, f"{runtime} is not installed (pip install 'claraseg[runtimes]')"
    try:
        net = make_net(runtime, bundle, module, threads)
    except Exception as e:  # an export or compile failure must leave the bundle on torch
        first = (str(e).splitlines() or [""])[0][:200]
        return None, f"{runtime} failed to load the network ({type(e).__name__}: {first})"
    record = _agreement_record(net, runtime)
    try:
        diff = float(json.loads(record.read_text(encoding="utf-8"))["max_prob_diff"])
    except (OSError, ValueError, KeyError, TypeError):
        diff = float("nan")
    if diff <= TOLERANCE[runtime]:
        return net, diff
    x = agreement_input(bundle)
    with torch.no_grad():
        ref = reference if reference is not None else module(x)
        diff = max_prob_diff(net(x), ref)
    if not diff <= TOLERANCE[runtime]:
        return None, f"{runtime} disagrees with torch (max probability difference {diff:.2e} > {TOLERANCE[runtime]})"
    try:
        write_json_atomic(record, {"model": bundle.name, "runtime": runtime, "max_prob_diff": diff,
                                   "tolerance": TOLERANCE[runtime], "date": time.strftime("%Y-%m-%d %H:%M:%S")})
        prune_cache(record.parent, 8 * CACHE_KEEP, "*.json")
    except OSError as e:  # a read-only cache: measure again next time
        _warn_once(f"cannot record the runtime check in {record} ({e})")
    return net, diff


def _choice_key(bundle: Bundle, threads: int, batch: int) -> str:
    import torch

    versions = [f"{name}{_package_version(name)}" for name in ("onnxruntime", "openvino") if available(name)]

    return "|".join([bundle.name, weights_digest(bundle)[:20], f"threads{threads}", f"batch{batch}", "engine-torch",
                     f"torch{torch.__version__}", *versions, _cpu_name()])


def choose_runtime(bundle: Bundle, module, threads: int, repeats: int = 3) -> tuple[str, dict[str, Any]]:
    """The fastest runtime for the bundle on this machine (median of ``repeats`` forwards of a batch of
    the bundle's ``tta_flips``, after one warm-up), among those installed that agree with torch; cached
    in ``<cache>/runtime_choice.json`` per weights, thread count, versions and CPU. Returns
    ``(runtime, record)``."""
    import torch

    from claraseg.engine.onednn import onednn_network

    batch = int(bundle.settings.get("tta_flips", 1))
    key = _choice_key(bundle, threads, batch)
    path = cache_dir() / "runtime_choice.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict) and cached[key].get("runtime") in RUNTIMES:
        return cached[key]["runtime"], cached[key]
    x = agreement_input(bundle, batch)
    with torch.no_grad():
        ref = module(agreement_input(bundle))
    ms: dict[str, float] = {}
    refused: dict[str, str] = {}
    for runtime in ("torch", "onnxruntime", "openvino"):
        net, info = checked_net(runtime, bundle, module, threads, ref)
        if net is None:
            refused[runtime] = str(info)
            continue
        if runtime == "torch" and batch == 1:
            net = onednn_network(net)  # what the engine's forward runs for a torch network at batch 1
        ms[runtime] = _median_ms(net, x, repeats)
    best = min(ms, key=ms.get)
    record = {"runtime": best, "median_ms": ms, "refused": refused, "batch": batch, "threads": threads,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not isinstance(cached, dict):
        cached = {}
    cached[key] = record
    try:
        write_json_atomic(path, cached)
    except OSError as e:  # a read-only home: measure again next time
        _warn_once(f"cannot cache the runtime choice in {path} ({e})")
    log.info("runtime of %s: %s (median ms per forward of batch %d: %s)", bundle.name, best, batch, ms)
    return best, record


def bundle_runtime(bundle: Bundle) -> str:
    """The runtime a bundle asks for: ``$CLARASEG_RUNTIME``, else its ``claraseg.runtime``, else torch."""
    runtime = os.environ.get("CLARASEG_RUNTIME") or bundle.settings.get("runtime") or "torch"
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} (of {bundle.name}, or $CLARASEG_RUNTIME) is not one of {RUNTIMES}")
    return runtime


def runtime_net(bundle: Bundle, module, device: str):
    """What the engine calls for ``bundle`` on ``device``: ``module`` itself, or the runtime object the
    bundle's setting selects (see the module's docstring). Interactive kinds only; the CPU thread count is
    torch's at this call (the engine's)."""
    import torch

    if bundle.kind not in EXPORTABLE_KINDS:
        return module  # a segmentation bundle's pipeline runs the module itself (with its own autocast)
    if device.startswith("cuda"):
        return AutocastNet(module, str(bundle.settings.get("amp_dtype", "float16")))
    runtime = bundle_runtime(bundle)
    if runtime == "torch":
        return module
    threads = torch.get_num_threads()
    if runtime == "auto":
        runtime, _ = choose_runtime(bundle, module, threads)
        if runtime == "torch":
            return module
    net, info = checked_net(runtime, bundle, module, threads)
    if net is None:
        _warn_once(f"{bundle.name}: running on torch: {info}")
        return module
    return net
