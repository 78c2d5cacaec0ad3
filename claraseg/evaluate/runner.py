"""Run the click protocol over the structures of label maps and summarise the results as a JSON report."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from claraseg.backend import Backend, ModelDescriptor
from claraseg.errors import ClarasegError, UnknownModelError
from claraseg.evaluate.protocol import (
    AUC_CLICKS,
    EXTREME_KINDS,
    NOC_CAP,
    NOC_THRESHOLDS,
    SLICE_KINDS,
    TIE_SEED,
    StructureResult,
    run_structure,
)
from claraseg.io import Image

#: Interactions whose mean Dice the summary reports (those within the run's N).
SUMMARY_AT = (1, 3, 5, 10, 20)
#: Default smallest structure evaluated (voxels), as in the issue's targets.
MIN_VOXELS = 1000
#: Kinds the protocol can evaluate.
PROTOCOL_KINDS = ("deepgrow3d", "deepgrow2d", "dextr3d")


@dataclass
class Structure:
    """One structure to evaluate: a label value of a label map on an image's grid."""

    case: str
    image: Image
    truth: np.ndarray  # bool [k, j, i]
    label: int
    name: str


def align_label(image: Image, label: Image) -> Image:
    """``label`` on ``image``'s grid when it covers exactly the same voxels under another axis order or
    flipped axes (a lossless re-indexing, as Slicer accepts such a segmentation); ``label`` itself when
    the grids already match. Raises :class:`GeometryMismatchError` (naming the differences) otherwise."""
    if image.same_grid(label):
        return label
    t = np.linalg.inv(label.ijk_to_lps) @ image.ijk_to_lps  # image index -> label index
    a, b = t[:3, :3], t[:3, 3]
    p = np.round(a)
    size_img, size_lab = np.asarray(image.size_ijk), np.asarray(label.size_ijk)
    ok = (np.allclose(a, p, atol=1e-3) and np.allclose(np.abs(p).sum(axis=0), 1) and np.allclose(np.abs(p).sum(axis=1), 1)
          and np.allclose(b, np.round(b), atol=1e-2))
    if ok:
        src = np.argmax(np.abs(p), axis=0)  # label axis feeding each image axis
        sign = p[src, np.arange(3)]
        b = np.round(b)
        ok = all(size_lab[src[c]] == size_img[c] and b[src[c]] == (0 if sign[c] > 0 else size_img[c] - 1)
                 for c in range(3))
    if not ok:
        image.check_same_grid(label, "label map")
    arr_ijk = np.transpose(label.array, (2, 1, 0)).transpose(tuple(int(r) for r in src))
    for c in range(3):
        if sign[c] < 0:
            arr_ijk = np.flip(arr_ijk, axis=c)
    return image.with_array(np.ascontiguousarray(np.transpose(arr_ijk, (2, 1, 0))), labels=label.labels)


def structures_of(case: str, image: Image, label: Image, labels: Sequence[int] | None = None,
                  min_voxels: int = MIN_VOXELS, names: dict[int, str] | None = None) -> list[Structure]:
    """The structures of ``label`` to evaluate: the chosen values (default all), at least ``min_voxels``.

    A label map on the same voxels under another axis order or flip is re-indexed onto the image's grid
    (:func:`align_label`). Raises :class:`GeometryMismatchError` when it covers other voxels, and
    :class:`ClarasegError` when a chosen value is absent.
    """
    label = align_label(image, label)
    values, counts = np.unique(label.array, return_counts=True)
    present = {int(v): int(c) for v, c in zip(values, counts) if v != 0}
    if labels:
        missing = [v for v in labels if v not in present]
        if missing:
            raise ClarasegError(f"{case}: label value(s) {missing} do not occur in the label map "
                                f"(present: {sorted(present)[:40]})")
        chosen = list(labels)
    else:
        chosen = sorted(present)
    names = names or {v: info.name for v, info in label.labels.items()}
    out = []
    for v in chosen:
        if present[v] >= min_voxels:
            out.append(Structure(case, image, label.array == v, v, names.get(v, f"label_{v}")))
    return out


def resolve_model(backend: Backend, model: str, kind: str | None = None) -> ModelDescriptor:
    """The descriptor of ``model`` on ``backend`` (``kind`` overrides the protocol to follow)."""
    found = {d.name: d for d in backend.models()}
    base = model.split("@")[0]
    d = found.get(model) or found.get(base)
    if d is None:
        raise UnknownModelError(f"no model {model!r} on this backend (available: {', '.join(sorted(found)) or 'none'})")
    d = ModelDescriptor.from_dict(d.to_dict())
    d.name = model
    if kind:
        d.kind = kind
    if d.kind not in PROTOCOL_KINDS:
        raise ClarasegError(
            f"model {model!r} is a {d.kind} model; the click protocol evaluates {', '.join(PROTOCOL_KINDS)} models"
        )
    return d


def default_refine_model(backend: Backend) -> str | None:
    """The model that refines DEXTR3D results by clicks: the backend's first DeepGrow 3D model."""
    names = sorted(d.name for d in backend.models() if d.kind == "deepgrow3d")
    return "deepgrow3d" if "deepgrow3d" in names else (names[0] if names else None)


def run(backend: Backend, model: ModelDescriptor, structures: Iterable[Structure], *, interactions: int = NOC_CAP,
        refine_model: str | None = None, slice_axis: int = 2, jitter_seeds: int = 0, progress: bool = True,
        desc: str | None = None) -> list[dict[str, Any]]:
    """Run the protocol on every structure (one session per image) and return per-structure dicts.

    With ``jitter_seeds`` > 0 (DEXTR3D), each structure is also run with the extreme points jittered
    (+-3 voxels) by seeds ``0 .. jitter_seeds - 1``; those runs are listed under ``jitter``.
    """
    from tqdm import tqdm

    if model.kind in EXTREME_KINDS and interactions > 1 and not refine_model:
        raise ClarasegError(
            f"{model.name} is a DEXTR3D model: refinement clicks after the extreme points need a DeepGrow 3D "
            "model on the backend (name it with --refine-model), or run with --clicks 1"
        )
    structures = list(structures)
    out: list[dict[str, Any]] = []
    sessions: dict[int, Any] = {}
    try:
        bar = tqdm(structures, desc=desc or model.name, unit="structure", disable=not progress, file=sys.stderr)
        for s in bar:
            bar.set_postfix_str(f"{s.case}:{s.name}")
            key = id(s.image)
            if key not in sessions:
                for old in sessions.values():
                    old.close()
                sessions = {key: backend.open_session(s.image)}
            session = sessions[key]
            kwargs = dict(label=s.label, name=s.name, interactions=interactions, refine_model=refine_model,
                          slice_axis=slice_axis)
            result = run_structure(session, model.name, model.kind, s.truth, **kwargs)
            entry = {"case": s.case, **result.to_dict()}
            if jitter_seeds and model.kind in EXTREME_KINDS:
                jit = [run_structure(session, model.name, model.kind, s.truth, jitter_seed=seed, **kwargs)
                       for seed in range(jitter_seeds)]
                entry["jitter"] = {
                    "seeds": list(range(jitter_seeds)),
                    "dice_at_1": [r.dice[0] for r in jit],
                    "mean_dice": _mean_curve(jit),
                    "noc": {k: float(np.mean([r.noc[k] for r in jit])) for k in jit[0].noc},
                }
            out.append(entry)
    finally:
        for old in sessions.values():
            old.close()
    return out


def _mean_curve(results: Sequence[StructureResult]) -> list[float]:
    return np.mean([r.dice for r in results], axis=0).round(4).tolist()


def summarize(structures: Sequence[dict[str, Any]], interactions: int) -> dict[str, Any]:
    """The report's summary: mean Dice after interactions 1, 3, 5, 10 (and 20), mean NoC, AUC, latency."""
    if not structures:
        return {"structures": 0, "mean_dice_at": {str(n): None for n in SUMMARY_AT if n <= max(interactions, 10)},
                "mean_noc85": None, "latency_ms": {"p50": None, "p95": None}}
    curves = np.asarray([s["dice"] for s in structures], dtype=np.float64)
    lat = np.asarray([t for s in structures for t in s["latency_ms"]], dtype=np.float64)
    comp = np.asarray([t for s in structures for t in s["compute_ms"]], dtype=np.float64)
    aucs = [s["auc"] for s in structures if s["auc"] is not None]
    summary: dict[str, Any] = {
        "structures": len(structures),
        "mean_dice_at": {str(n): (round(float(curves[:, n - 1].mean()), 4) if n <= interactions else None)
                         for n in SUMMARY_AT if n <= max(interactions, 10)},
        "mean_dice_curve": curves.mean(axis=0).round(4).tolist(),
        "mean_noc80": round(float(np.mean([s["noc"]["80"] for s in structures])), 3),
        "mean_noc85": round(float(np.mean([s["noc"]["85"] for s in structures])), 3),
        "mean_noc90": round(float(np.mean([s["noc"]["90"] for s in structures])), 3),
        "mean_auc": round(float(np.mean(aucs)), 4) if aucs else None,
        "latency_ms": _percentiles(lat),
        "compute_ms": _percentiles(comp),
        "transfer_ms": _percentiles(lat - comp),
    }
    jit = [s["jitter"] for s in structures if "jitter" in s]
    if jit:
        summary["jitter"] = {"mean_dice_at_1": round(float(np.mean([np.mean(j["dice_at_1"]) for j in jit])), 4),
                             "seeds": jit[0]["seeds"]}
    return summary


def _percentiles(ms: np.ndarray) -> dict[str, Any]:
    if not ms.size:
        return {"p50": None, "p95": None, "interactions": 0}
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
            "interactions": int(ms.size)}


def protocol_description(kind: str, interactions: int, slice_axis: int, refine_model: str | None) -> dict[str, Any]:
    """What the numbers mean, stored in every report."""
    d: dict[str, Any] = {
        "name": "ANCHORS.md click protocol",
        "interactions": interactions,
        "next_click": "voxel of maximal EDT (voxel units, volume border counts as outside) in the largest "
                      "26-connected error component; foreground where the truth is 1",
        "tie_seed": TIE_SEED,
        "noc_thresholds": list(NOC_THRESHOLDS),
        "noc_cap": NOC_CAP,
        "noc_unreached": f"counted as {NOC_CAP}",
        "auc": f"trapezoid over the Dice after the {AUC_CLICKS} refinement clicks (max {AUC_CLICKS - 1}.0)",
        "latency": "wall-clock per backend call as the evaluator sees it (local backend: all compute; "
                   "remote: compute as the server reports it (X-Compute-Ms) + transfer)",
    }
    if kind in EXTREME_KINDS:
        d["first_interaction"] = "the 6 extreme points of the truth (ties: nearest the centroid)"
        d["refine_model"] = refine_model
        d["auc_interactions"] = [2, 1 + AUC_CLICKS]
    else:
        d["auc_interactions"] = [1, AUC_CLICKS]
    if kind in SLICE_KINDS:
        d["per_slice"] = (f"2D: one slice per structure, normal to axis {slice_axis} ({'ijk'[slice_axis]}), "
                          "through the largest cross-section; clicks (8-connected errors) and Dice on that slice")
    return d


def environment() -> dict[str, Any]:
    """Hardware and threads the numbers were measured with."""
    env: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):  # other work on the machine slows every figure: say how much there was
        env["load_average_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = bool(torch.cuda.is_available())
    return env


def compare(ours: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Ours beside the baseline: the mean Dice curves and whether ours is ahead at every interaction."""
    a = ours.get("mean_dice_curve") or []
    b = baseline.get("mean_dice_curve") or []
    n = min(len(a), len(b))
    ahead = [bool(a[i] > b[i]) for i in range(n)]
    return {"ahead_at_every_interaction": bool(n) and all(ahead), "ahead": ahead,
            "dice_difference": [round(a[i] - b[i], 4) for i in range(n)]}



def run_baseline(baseline: Backend, kind: str, structures: Sequence[Structure], *, interactions: int = NOC_CAP,
                 slice_axis: int = 2, progress: bool = True) -> dict[str, Any]:
    """The classical baseline on ``structures`` with the protocol of ``kind``: ``{method, structures, summary}``."""
    method = baseline.models()[0].name
    results = run(baseline, ModelDescriptor(name=method, kind=kind), structures, interactions=interactions,
                  refine_model=method if kind in EXTREME_KINDS else None, slice_axis=slice_axis,
                  progress=progress, desc=method)
    return {"method": method, "structures": results, "summary": summarize(results, interactions)}


def build_report(backend: Backend, model: ModelDescriptor, structures: Sequence[Structure], *,
                 baseline: Backend | dict[str, Any] | None = None, interactions: int = NOC_CAP,
                 refine_model: str | None = None, slice_axis: int = 2, jitter_seeds: int = 0, progress: bool = True,
                 backend_name: str = "local", title: str | None = None,
                 inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``structures`` and return the full report: per-structure results, summary
    and, with a ``baseline`` (a classical backend, run on the same structures with the same protocol, or
    the result of :func:`run_baseline` on them), the baseline beside it and the comparison."""
    import claraseg

    if not structures:
        raise ClarasegError("no structure to evaluate: none has enough voxels (lower --min-voxels) or "
                            "the chosen labels are empty")
    t0 = time.time()
    results = run(backend, model, structures, interactions=interactions, refine_model=refine_model,
                  slice_axis=slice_axis, jitter_seeds=jitter_seeds, progress=progress)
    report: dict[str, Any] = {
        "title": title or f"{model.name} ({model.kind})",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "claraseg_version": getattr(claraseg, "__version__", None),
        "model": {"name": model.name, "kind": model.kind, "version": model.version, "backend": backend_name},
        "inputs": inputs or {},
        "protocol": protocol_description(model.kind, interactions, slice_axis, refine_model),
        "environment": environment(),
        "structures": results,
        "summary": summarize(results, interactions),
        "wall_s": round(time.time() - t0, 1),
    }
    if baseline is not None:
        if not isinstance(baseline, dict):
            baseline = run_baseline(baseline, model.kind, structures, interactions=interactions,
                                    slice_axis=slice_axis, progress=progress)
        report["baseline"] = baseline
        report["comparison"] = compare(report["summary"], baseline["summary"])
    return report
