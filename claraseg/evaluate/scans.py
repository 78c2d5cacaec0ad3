"""Evaluation on a split of the scan-level split (``claraseg eval --split validation|test``).

Every structure of every scan of the split with at least the split's minimum voxels (per folder in
``scan_split.json``; a hippocampus case is one structure, its two parts together) runs the click
protocol with the model and with the classical baseline. Reports: ``split_<split>_<model>.json`` /
``.png`` with the summary per source (folder) and per structure, and ``split_<split>_summary.json``.
The figures of ``validation`` choose settings; those of ``test`` are reported and choose nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.backend import Backend
from claraseg.evaluate.heldout import heldout_baseline
from claraseg.evaluate.report import plot, write_json
from claraseg.evaluate.runner import (
    Structure,
    build_report,
    default_refine_model,
    resolve_model,
    run,
    structures_of,
    summarize,
)
from claraseg.evaluate.split import HIPPOCAMPUS, split_scans
from claraseg.io import read_image, read_labels_json

#: Structures at least this large (voxels) count as large organs in ``first_click_large``.
LARGE_VOXELS = 10_000


def split_structures(split: str, data_dir: str | Path, *, min_voxels: int | None = None,
                     sources: Sequence[str] | None = None) -> list[Structure]:
    """The structures of the scans of ``split`` (``min_voxels`` overrides the split file's minimum;
    ``sources`` keeps only those folders)."""
    out: list[Structure] = []
    for scan in split_scans(data_dir, split):
        if sources and scan.source not in sources:
            continue
        floor = scan.min_voxels if min_voxels is None else int(min_voxels)
        image = read_image(scan.image)
        label = read_image(scan.label, label=True)
        if scan.source == HIPPOCAMPUS:
            whole = label.with_array((label.array > 0).astype("uint8"))
            out += structures_of(f"{HIPPOCAMPUS}/{scan.name}", image, whole, None, floor, {1: "hippocampus"})
        else:
            names = {v: info.name for v, info in read_labels_json(scan.labels_json).items()}
            out += structures_of(scan.source, image, label, None, floor, names)
    return out


def _by_source(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["case"].split("/")[0], []).append(r)
    return groups


def first_click_large(rows: Sequence[dict[str, Any]], large: int = LARGE_VOXELS) -> dict[str, Any]:
    """Mean Dice after the first interaction over the structures of at least ``large`` voxels."""
    big = [r for r in rows if r["voxels"] >= large]
    return {"min_voxels": large, "structures": len(big),
            "mean_dice_at_1": round(float(np.mean([r["dice"][0] for r in big])), 4) if big else None,
            "per_structure": {f"{r['case']}:{r['name']}": round(float(r["dice"][0]), 4) for r in big}}


def per_structure(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per structure: Dice after interactions 1 / 3 / 5 / 10 / 20 (those run) and NoC@85."""
    out = []
    for r in rows:
        d = r["dice"]
        out.append({"case": r["case"], "name": r["name"], "voxels": r["voxels"],
                    "dice_at": {str(n): round(float(d[n - 1]), 4) for n in (1, 3, 5, 10, 20) if n <= len(d)},
                    "noc85": r["noc"]["85"]})
    return out


def evaluate_split(backend: Backend, models: Sequence[str], split: str, data_dir: str | Path, out_dir: str | Path, *,
                   method: str | None = "random_walker", interactions: int = 20, min_voxels: int | None = None,
                   sources: Sequence[str] | None = None, jitter_seeds: int = 0, progress: bool = True,
                   backend_name: str = "local", tag: str = "") -> dict[str, Any]:
    """Evaluate each model (and the baseline) on the structures of ``split``; write
    ``split_<split>_<model>[_<tag>].json`` / ``.png`` into ``out_dir``; return ``{model: summary}``."""
    out = Path(out_dir)
    structures = split_structures(split, data_dir, min_voxels=min_voxels, sources=sources)
    summaries: dict[str, Any] = {}
    for name in models:
        t0 = time.time()
        descriptor = resolve_model(backend, name)
        baseline = (heldout_baseline(method, descriptor.kind, structures, interactions, out, progress,
                                     prefix=f"split_{split}_") if method else None)
        refine = default_refine_model(backend) if descriptor.kind == "dextr3d" else None
        report = build_report(
            backend, descriptor, structures, baseline=baseline, interactions=interactions, refine_model=refine,
            jitter_seeds=jitter_seeds, progress=progress, backend_name=backend_name,
            title=f"{name} on the {split} split (scans never trained on)",
            inputs={"split": split, "split_file": "claraseg/evaluate/scan_split.json", "data_dir": str(data_dir),
                    "min_voxels": min_voxels, "sources": list(sources) if sources else None},
        )
        runs = (("ours", report), ("baseline", report.get("baseline")))
        report["summary_by_source"] = {
            run_name: {src: summarize(rows, interactions) for src, rows in _by_source(run["structures"]).items()}
            for run_name, run in runs if run}
        report["first_click_large"] = {run_name: first_click_large(run["structures"]) for run_name, run in runs if run}
        report["per_structure"] = per_structure(report["structures"])
        report["wall_s"] = round(time.time() - t0, 1)
        stem = f"split_{split}_{name}" + (f"_{tag}" if tag else "")
        write_json(report, out / f"{stem}.json")
        plot(report, out / f"{stem}.png")
        summaries[name] = summary_entry(report)
    write_split_summary(out, split)
    return summaries


def check_bundle(bundle_dir: str | Path, data_dir: str | Path, *, split: str = "validation",
                 interactions: int = 5, progress: bool = False) -> dict[str, Any]:
    """The protocol's summary for one bundle folder on ``split`` through the in-process engine, with the
    bundles beside it (a DEXTR3D bundle's refinement clicks go to the DeepGrow 3D bundle there; without
    one only the extreme points are evaluated). What ``claraseg pretrain`` records after training."""
    from claraseg.engine import LocalBackend

    bundle_dir = Path(bundle_dir)
    backend = LocalBackend(bundle_dir.parent, device="cpu", idle_timeout=None)
    try:
        descriptor = resolve_model(backend, bundle_dir.name)
        refine = default_refine_model(backend) if descriptor.kind == "dextr3d" else None
        n = interactions if descriptor.kind != "dextr3d" or refine else 1
        rows = run(backend, descriptor, split_structures(split, data_dir), interactions=n, refine_model=refine,
                   progress=progress)
    finally:
        backend.close()
    return {"split": split, "interactions": n, "summary": summarize(rows, n),
            "summary_by_source": {src: summarize(r, n) for src, r in _by_source(rows).items()},
            "first_click_large": first_click_large(rows)}


def summary_entry(report: dict[str, Any]) -> dict[str, Any]:
    return {"summary": report["summary"], "baseline": (report.get("baseline") or {}).get("summary"),
            "summary_by_source": report.get("summary_by_source"), "first_click_large": report.get("first_click_large"),
            "model": report.get("model"), "created": report.get("created")}


def write_split_summary(out_dir: str | Path, split: str) -> Path:
    """Rebuild ``split_<split>_summary.json`` from every ``split_<split>_*.json`` report in ``out_dir``."""
    out = Path(out_dir)
    table = {}
    prefix = f"split_{split}_"
    for path in sorted(out.glob(f"{prefix}*.json")):
        if path.name != f"{prefix}summary.json" and not path.name.startswith(f"{prefix}baseline_"):
            table[path.stem[len(prefix):]] = summary_entry(json.loads(path.read_text()))
    return write_json(table, out / f"{prefix}summary.json")
