"""Held-out evaluation of the default interactive models (``claraseg eval --heldout``).

Each default bundle records in its metadata (``claraseg.heldout``) the structures and cases of
the sample data kept out of its training, and the fresh phantom seeds it never saw. This module turns
that record into the structures to evaluate (at least ``min_voxels`` voxels), runs the click protocol
on them with the model and with the classical baseline, and writes one JSON and one PNG per model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claraseg.backend import Backend, ModelDescriptor
from claraseg.errors import ClarasegError
from claraseg.evaluate.classical import ClassicalBackend
from claraseg.evaluate.report import plot, write_json
from claraseg.evaluate.runner import (
    MIN_VOXELS,
    Structure,
    build_report,
    default_refine_model,
    resolve_model,
    run_baseline,
    structures_of,
    summarize,
)
from claraseg.io import make_phantom, read_image, read_labels_json

#: Folders of the sample data whose held-out structures are listed by name.
NAMED_FOLDERS = ("ct_abdomen_3mm", "mr_abdomen_3mm", "mr_brain_1mm")
#: Phantom size the default models were trained with (fresh seeds use the same size).
PHANTOM_SIZE = (96, 96, 48)


def heldout_record(descriptor: ModelDescriptor) -> dict[str, Any]:
    """The held-out record of a model's bundle; :class:`ClarasegError` when it has none."""
    training = descriptor.extra.get("training") or {}
    record = training.get("heldout") or descriptor.extra.get("heldout")
    if not record:
        raise ClarasegError(
            f"model {descriptor.name!r} records no held-out structures (claraseg.heldout in its "
            "configs/metadata.json); train it with `claraseg pretrain` or evaluate explicit files with "
            "`claraseg eval --image ... --label ...`"
        )
    return record


def heldout_structures(record: dict[str, Any], data_dir: str | Path, *, min_voxels: int = MIN_VOXELS,
                       hippocampus_cases: int = 6) -> list[Structure]:
    """The held-out structures of the sample data (``data_dir``) and the fresh phantoms."""
    data = Path(data_dir)
    out: list[Structure] = []
    if record.get("split"):
        # Trained on the train split of the scan-level split: every validation and test scan is held out.
        from claraseg.evaluate.scans import split_structures

        for split in ("validation", "test"):
            out += split_structures(split, data, min_voxels=min_voxels)
    for folder in NAMED_FOLDERS:
        wanted = record.get(folder) or []
        if not wanted:
            continue
        d = data / folder
        image = read_image(d / "image.nii.gz")
        label = read_image(d / "label.nii.gz", label=True)
        names = {v: info.name for v, info in read_labels_json(d / "labels.json").items()}
        by_name = {n: v for v, n in names.items()}
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise ClarasegError(f"{d}: held-out structure(s) {unknown} are not in labels.json")
        out += structures_of(folder, image, label, [by_name[n] for n in wanted], min_voxels, names)
    for case in list(record.get("mr_hippocampus") or [])[:hippocampus_cases]:
        d = data / "mr_hippocampus"
        image = read_image(d / "images" / case)
        label = read_image(d / "labels" / case, label=True)
        whole = label.with_array((label.array > 0).astype("uint8"))  # anterior + posterior: one hippocampus
        out += structures_of(f"mr_hippocampus/{case}", image, whole, None, min_voxels, {1: "hippocampus"})
    for seed in record.get("phantom_seeds") or []:
        image, label = make_phantom(seed=int(seed), size_ijk=PHANTOM_SIZE)
        out += structures_of(f"phantom_{seed}", image, label, None, min_voxels)
    return out


def _by_source(structures: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per-structure results grouped by data source (sample-data folder, or "phantoms")."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in structures:
        source = "phantoms" if s["case"].startswith("phantom_") else s["case"].split("/")[0]
        groups.setdefault(source, []).append(s)
    return groups


def _baseline_key(method: str, kind: str, structures: Sequence[Structure], interactions: int) -> dict[str, Any]:
    """What a baseline result depends on: method, protocol, structures and the code that computes them."""
    import claraseg.evaluate.classical as classical
    import claraseg.evaluate.protocol as protocol

    code = hashlib.sha1()
    for module in (classical, protocol):
        code.update(Path(module.__file__).read_bytes())
    return {"method": method, "kind": kind, "interactions": interactions, "code_sha1": code.hexdigest(),
            "structures": [[s.case, s.label, int(s.truth.sum())] for s in structures]}


def heldout_baseline(method: str, kind: str, structures: Sequence[Structure], interactions: int, out_dir: Path,
                     progress: bool = True, prefix: str = "") -> dict[str, Any]:
    """The baseline's results on the held-out structures, reused from ``baseline_<kind>_<method>.json`` in
    ``out_dir`` (``prefix`` before the name) when it was computed for exactly these structures by this code (it needs no weights, so
    it can be run before they exist), else computed and saved there."""
    key = _baseline_key(method, kind, structures, interactions)
    cache = Path(out_dir) / f"{prefix}baseline_{kind}_{method}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["baseline"]
    result = run_baseline(ClassicalBackend(method), kind, structures, interactions=interactions, progress=progress)
    write_json({"key": key, "baseline": result}, cache)
    return result


def evaluate_heldout(backend: Backend, models: Sequence[str], data_dir: str | Path, out_dir: str | Path, *,
                     method: str | None = "random_walker", interactions: int = 20, min_voxels: int = MIN_VOXELS,
                     hippocampus_cases: int = 6, jitter_seeds: int = 0, progress: bool = True,
                     backend_name: str = "local", baseline_only: bool = False) -> dict[str, Any]:
    """Evaluate each model on its held-out structures (and the baseline on the same ones); write
    ``heldout_<model>.json`` and ``.png`` into ``out_dir`` and return ``{model: summary}``.
    ``baseline_only`` computes (and saves) only the baselines."""
    out = Path(out_dir)
    summaries: dict[str, Any] = {}
    for name in models:
        t0 = time.time()
        descriptor = resolve_model(backend, name)
        record = heldout_record(descriptor)
        structures = heldout_structures(record, data_dir, min_voxels=min_voxels,
                                        hippocampus_cases=hippocampus_cases)
        baseline = heldout_baseline(method, descriptor.kind, structures, interactions, out, progress) if method else None
        if baseline_only:
            summaries[name] = {"baseline": baseline["summary"] if baseline else None}
            continue
        refine = default_refine_model(backend) if descriptor.kind == "dextr3d" else None
        report = build_report(
            backend, descriptor, structures, baseline=baseline, interactions=interactions, refine_model=refine,
            jitter_seeds=jitter_seeds, progress=progress, backend_name=backend_name,
            title=f"{name} on held-out structures (>= {min_voxels} voxels) and fresh phantoms",
            inputs={"heldout": record, "data_dir": str(data_dir), "hippocampus_cases": hippocampus_cases},
        )
        report["summary_by_source"] = {
            run_name: {src: summarize(rows, interactions) for src, rows in _by_source(run["structures"]).items()}
            for run_name, run in (("ours", report), ("baseline", report.get("baseline"))) if run
        }
        report["wall_s"] = round(time.time() - t0, 1)
        write_json(report, out / f"heldout_{name}.json")
        plot(report, out / f"heldout_{name}.png")
        summaries[name] = _summary_entry(report)
    if not baseline_only:
        write_summary(out)
    return summaries


def _summary_entry(report: dict[str, Any]) -> dict[str, Any]:
    return {"summary": report["summary"], "baseline": report.get("baseline", {}).get("summary"),
            "comparison": report.get("comparison"), "summary_by_source": report.get("summary_by_source"),
            "created": report.get("created")}


def write_summary(out_dir: str | Path) -> Path:
    """Rebuild ``heldout_summary.json`` from every ``heldout_<model>.json`` in ``out_dir`` (so models
    evaluated by separate, parallel runs end up in one table)."""
    out = Path(out_dir)
    table = {}
    for path in sorted(out.glob("heldout_*.json")):
        if path.name != "heldout_summary.json":
            table[path.stem[len("heldout_"):]] = _summary_entry(json.loads(path.read_text()))
    return write_json(table, out / "heldout_summary.json")
