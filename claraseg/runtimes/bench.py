"""``claraseg bench-runtimes``: one interactive network's forward under every runtime and torch variant,
measured in one run on this machine, and the click check that decides whether a faster runtime may be
the default (the same clicks on torch and on the runtime, Dice of their masks).

Variants: torch eager (the reference), torch with every convolution on oneDNN (the engine's torch path),
channels-last memory format, ``torch.compile`` (inductor),
int8 dynamic quantization (torch's, and ONNX Runtime's on the ONNX file), ONNX Runtime, OpenVINO; on a CUDA
device also float32 / float16 / bfloat16 autocast. The forwards of all variants are interleaved (one
of each per round) so that other work on the machine slows them alike; medians and ratios to torch eager
are reported with each variant's agreement with torch (max probability difference, Dice of the 0.5 masks).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.evaluate.protocol import dice as mask_dice
from claraseg.runtimes import nets
from claraseg.runtimes.export import input_shape

#: A variant is kept as a default only when a whole click's mask agrees with torch's at least this well.
CLICK_DICE = 0.999


#: The variants besides torch eager, in the order they are built. ``torch_onednn`` is what the engine runs
#: for a torch bundle (:func:`claraseg.engine.onednn.onednn_network`: every convolution on oneDNN).
VARIANTS = ("torch_onednn", "channels_last", "torch_compile", "torch_int8_dynamic", "onnxruntime", "openvino",
            "onnxruntime_int8_dynamic")


def _variants(bundle, module, threads: int, only=None) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """name -> callable(x) for every variant (of ``only``, default all) that builds here; name -> why not
    for the others; name -> seconds it took to build (export, compile)."""
    import torch

    out: dict[str, Any] = {"torch_eager": module}
    skipped: dict[str, str] = {}
    build_s: dict[str, float] = {}

    def add(name, make):
        if only is not None and name not in only:
            return
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = make()
            build_s[name] = round(time.perf_counter() - t0, 2)
        except Exception as e:  # one variant that does not build here must not end the benchmark
            skipped[name] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"

    def channels_last():
        fmt = torch.channels_last_3d if len(input_shape(bundle)) == 4 else torch.channels_last
        net = copy.deepcopy(module).to(memory_format=fmt)
        return lambda x: net(x.contiguous(memory_format=fmt))

    def compiled():
        # A fresh compile per network: dynamo's cache is per code object (every UNet shares one forward), so a
        # second network would otherwise recompile with symbolic shapes.
        torch._dynamo.reset()
        net = torch.compile(copy.deepcopy(module), dynamic=False)
        with torch.no_grad():
            net(nets.agreement_input(bundle))  # compile now, not in the first timed forward
        return net

    def torch_int8():
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d},
                             dtype=torch.qint8)
        changed = sum(type(a) is not type(b) for a, b in zip(module.modules(), q.modules()))
        if not changed:
            raise RuntimeError("quantize_dynamic quantized no layer: dynamic quantization covers Linear and "
                               "recurrent layers only, not Conv2d/Conv3d (the whole of these UNets)")
        return q

    def ort_int8():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        src = nets.onnx_path(bundle, module)
        dst = Path(tempfile.mkdtemp(prefix="claraseg-int8-")) / "model.int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # the quantizer logs a line per tensor at INFO on the root logger
        try:
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)
        finally:
            root.setLevel(level)
        return nets.OnnxRuntimeNet(dst, module, input_shape(bundle), threads)

    def onednn():
        from claraseg.engine.onednn import onednn_network

        net = onednn_network(module)
        if net is module:
            raise RuntimeError("oneDNN is not available to this torch")
        return net

    add("torch_onednn", onednn)
    add("channels_last", channels_last)
    add("torch_compile", compiled)
    add("torch_int8_dynamic", torch_int8)
    for runtime in ("onnxruntime", "openvino"):
        if nets.available(runtime):
            add(runtime, lambda runtime=runtime: nets.make_net(runtime, bundle, module, threads))
        elif only is None or runtime in only:
            skipped[runtime] = "not installed (pip install 'claraseg[runtimes]')"
    if nets.available("onnxruntime"):
        add("onnxruntime_int8_dynamic", ort_int8)
    return out, skipped, build_s


def bench_network(bundle, threads: int, repeats: int, batch: int = 1, only=None) -> dict[str, Any]:
    """Medians (ms) of ``repeats`` interleaved forwards of a ``[batch, *input]`` input per variant, their
    ratios to torch eager and their agreement with it."""
    import torch

    module = bundle.load_network("cpu")
    variants, skipped, build_s = _variants(bundle, module, threads, only)
    x = nets.agreement_input(bundle, batch)
    with torch.no_grad():
        ref = module(x)
        agree = {}
        for name, net in variants.items():
            y = net(x)
            agree[name] = {"max_prob_diff": round(nets.max_prob_diff(y, ref), 7),
                           "mask_dice": round(mask_dice((torch.sigmoid(y.float()) > 0.5).numpy(),
                                                    (torch.sigmoid(ref) > 0.5).numpy()), 6)}
            net(x)  # a second warm-up forward
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, net in variants.items():
                t0 = time.perf_counter()
                net(x)
                times[name].append(time.perf_counter() - t0)
    eager = float(np.median(times["torch_eager"]))
    onednn = float(np.median(times["torch_onednn"])) if "torch_onednn" in times else None
    rows = {}
    for name in variants:
        med = float(np.median(times[name]))
        rows[name] = {"median_ms": round(1000 * med, 2), "p90_ms": round(1000 * float(np.percentile(times[name], 90)), 2),
                      "ratio_to_eager": round(med / eager, 3),
                      **({"ratio_to_onednn": round(med / onednn, 3)} if onednn else {}), **agree[name],
                      **({"build_s": build_s[name]} if name in build_s else {})}
    return {"input": [batch, *input_shape(bundle)], "repeats": repeats, "variants": rows, "skipped": skipped}


def bench_cuda(bundle, repeats: int, batch: int = 1) -> dict[str, Any]:
    """float32 vs float16 vs bfloat16 autocast on the CUDA device; ``skipped`` without one."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "needs a CUDA device"}
    module = bundle.load_network("cuda")
    x = nets.agreement_input(bundle, batch).cuda()
    variants = {"float32": module, "float16": nets.AutocastNet(module, "float16"),
                "bfloat16": nets.AutocastNet(module, "bfloat16")}
    rows = {}
    with torch.no_grad():
        ref = module(x)
        for name, net in variants.items():
            for _ in range(3):
                net(x)
            torch.cuda.synchronize()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                net(x)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            rows[name] = {"median_ms": round(1000 * float(np.median(times)), 3),
                          "max_prob_diff": round(nets.max_prob_diff(net(x), ref), 6)}
    for row in rows.values():
        row["ratio_to_float32"] = round(row["median_ms"] / rows["float32"]["median_ms"], 3)
    return {"device": torch.cuda.get_device_name(0), "input": [batch, *input_shape(bundle)], "variants": rows}


def click_check(runtimes: list[str], repeats: int = 3) -> dict[str, Any]:
    """The same interactions on torch and on each runtime (the packaged bundles, ``runtime`` set): a
    DeepGrow 3D click (with its DEXTR3D shape re-fit), six extreme points (DEXTR3D), a DeepGrow 2D click, on
    the sample CT's spleen crop (or a phantom without the sample data), ``repeats`` rounds with the
    runtimes interleaved in each. Dice of every mask against torch's, whether the repeats give the same
    mask, the median latency of each interaction and its ratio to torch's."""
    import json

    from scipy import ndimage

    from claraseg.engine import LocalBackend
    from claraseg.models.registry import PACKAGED_DIR

    image, gt, source = _click_case()
    inside = np.argwhere(ndimage.binary_erosion(gt, iterations=2))
    centre = inside[len(inside) // 2][::-1].tolist()
    nz = np.argwhere(gt)[:, ::-1]
    points = [nz[nz[:, a].argmin()].tolist() for a in range(3)] + [nz[nz[:, a].argmax()].tolist() for a in range(3)]
    kinds = ("deepgrow3d", "dextr3d", "deepgrow2d")

    def run_once(backend, masks: dict[str, list[np.ndarray]], times: dict[str, list[float]]) -> None:
        s = backend.open_session(image)
        for name, call in (("deepgrow3d_click", lambda: s.click("deepgrow3d", foreground=[centre], object_id="a")),
                           ("dextr3d_points", lambda: s.extreme_points("dextr3d", points, object_id="b")),
                           ("deepgrow2d_click", lambda: s.click("deepgrow2d", foreground=[centre],
                                                                object_id="c", slice_axis=2))):
            t0 = time.perf_counter()
            delta = call()
            times.setdefault(name, []).append(time.perf_counter() - t0)
            full = np.zeros(image.array.shape, np.uint8)
            delta.paste(full, value=1)
            masks.setdefault(name, []).append(full > 0)
        s.close()

    report: dict[str, Any] = {"case": source, "repeats": repeats, "interleaved": True}
    root = Path(tempfile.mkdtemp(prefix="claraseg-click-check-"))
    backends = {}
    try:
        for runtime in ["torch", *runtimes]:
            folder = root / runtime
            for name in kinds:
                shutil.copytree(PACKAGED_DIR / name, folder / name)
                meta_path = folder / name / "configs" / "metadata.json"
                meta = json.loads(meta_path.read_text())
                meta["claraseg"]["runtime"] = runtime
                meta_path.write_text(json.dumps(meta))
            backends[runtime] = LocalBackend(folder, device="cpu", idle_timeout=None)
            backends[runtime].warmup()
        masks: dict[str, dict[str, list[np.ndarray]]] = {r: {} for r in backends}
        times: dict[str, dict[str, list[float]]] = {r: {} for r in backends}
        for backend in backends.values():
            run_once(backend, {}, {})  # warm-up round (first allocations, lazily built state)
        for _ in range(repeats):
            for runtime, backend in backends.items():
                run_once(backend, masks[runtime], times[runtime])
        torch_ms = {k: float(np.median(v)) for k, v in times["torch"].items()}
        for runtime, backend in backends.items():
            loaded = {n: getattr(backend.registry.network(n, "cpu"), "runtime", "torch") for n in kinds}
            m = masks[runtime]
            dice = {k: round(mask_dice(m[k][0], masks["torch"][k][0]), 6) for k in m}
            med = {k: float(np.median(v)) for k, v in times[runtime].items()}
            report[runtime] = {"loaded_as": loaded, "median_ms": {k: round(1000 * v, 1) for k, v in med.items()},
                               "ratio_to_torch": {k: round(v / torch_ms[k], 3) for k, v in med.items()},
                               "dice_to_torch": dice,
                               "repeat_identical": all(all(np.array_equal(v[0], x) for x in v[1:]) for v in m.values()),
                               "voxels": {k: int(np.count_nonzero(v[0])) for k, v in m.items()},
                               "dice_to_truth": {k: round(mask_dice(v[0], gt), 4) for k, v in m.items()},
                               "click_quality_unchanged": all(v >= CLICK_DICE for v in dice.values())}
    finally:
        for backend in backends.values():
            backend.close()
        shutil.rmtree(root, ignore_errors=True)
    return report


def _click_case():
    """(image, spleen mask, description): the sample CT cropped around its spleen, or a phantom's liver."""
    from claraseg.io import make_phantom, read_image, read_labels_json
    from claraseg.io.geometry import crop

    data = Path(os.environ.get("CLARASEG_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    folder = data / "ct_abdomen_3mm"
    if (folder / "image.nii.gz").is_file():
        image = read_image(folder / "image.nii.gz")
        label = read_image(folder / "label.nii.gz", label=True)
        names = {info.name: v for v, info in read_labels_json(folder / "labels.json").items()}
        gt = label.array == names["spleen"]
        nz = np.argwhere(gt)
        lo, hi = np.maximum(nz.min(axis=0) - 6, 0), np.minimum(nz.max(axis=0) + 7, gt.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        return crop(image, lo[::-1], hi[::-1]), gt[box], "ct_abdomen_3mm spleen crop (6-voxel margin)"
    image, label = make_phantom(seed=3, size_ijk=(96, 96, 48))
    return image, label.array == 1, "phantom seed 3, liver"


def run_bench_runtimes(models: list[str], *, threads: int = 2, repeats: int = 10, clicks: bool = True,
                       click_repeats: int = 3) -> dict[str, Any]:
    """The whole benchmark (see the module docstring)."""
    import torch

    from claraseg.evaluate.runner import environment
    from claraseg.models.registry import PACKAGED_DIR, ModelRegistry

    torch.set_num_threads(threads)
    registry = ModelRegistry(PACKAGED_DIR)
    t0 = time.time()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": threads,
                              "environment": environment(), "networks": {}}
    versions = {}
    for name in ("onnxruntime", "openvino", "onnx"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    report["environment"]["packages"] = versions
    for model in models:
        bundle = registry.get(model)
        entry = {"batch_1": bench_network(bundle, threads, repeats, 1)}
        tta = int(bundle.settings.get("tta_flips", 1))
        if tta > 1:
            entry[f"batch_{tta}_tta"] = bench_network(bundle, threads, max(3, repeats // 2), tta)
        entry["cuda"] = bench_cuda(bundle, repeats)
        report["networks"][model] = entry
    if clicks:
        report["clicks"] = click_check([r for r in ("onnxruntime", "openvino") if nets.available(r)], click_repeats)
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    report["wall_s"] = round(time.time() - t0, 1)
    return report


def format_report(report: dict[str, Any]) -> str:
    """One line per variant: median, p90, ratio to torch eager, agreement."""
    env = report["environment"]
    lines = [f"threads {report['threads']}; cpu {env.get('cpu')} x{env.get('cpu_count')}; load "
             f"{env.get('load_average_1_5_15min')} (before) {report.get('load_average_after')} (after)"]
    for model, entry in report["networks"].items():
        for key, bench in entry.items():
            if key == "cuda":
                if "skipped" in bench:
                    lines.append(f"{model} cuda: skipped ({bench['skipped']})")
                else:
                    for name, r in bench["variants"].items():
                        lines.append(f"{model} cuda {name}: {r['median_ms']} ms (x{r['ratio_to_float32']}) "
                                     f"max diff {r['max_prob_diff']}")
                continue
            lines.append(f"{model} input {bench['input']} ({bench['repeats']} interleaved rounds):")
            for name, r in bench["variants"].items():
                lines.append(f"  {name:26s} median {r['median_ms']:8.1f} ms  p90 {r['p90_ms']:8.1f} ms  "
                             f"x{r['ratio_to_eager']:<6} (x{r.get('ratio_to_onednn', '-')} of oneDNN) max prob diff {r['max_prob_diff']:.1e}  "
                             f"mask Dice {r['mask_dice']}")
            for name, why in bench["skipped"].items():
                lines.append(f"  {name:26s} not measured: {why}")
    clicks = report.get("clicks")
    if clicks:
        lines.append(f"clicks on {clicks['case']}:")
        for runtime in [k for k in clicks if k not in ("case", "repeats", "interleaved")]:
            c = clicks[runtime]
            lines.append(f"  {runtime:12s} ms {c['median_ms']} ratio to torch {c['ratio_to_torch']} "
                         f"Dice to torch {c['dice_to_torch']} "
                         f"repeat identical {c['repeat_identical']} quality unchanged {c['click_quality_unchanged']}")
    lines.append(f"wall {report['wall_s']} s")
    return "\n".join(lines)
