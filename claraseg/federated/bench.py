"""Benchmark of federated fine-tuning (``claraseg federate bench``): three sites, each holding different
structures of the sample data, fine-tune DeepGrow 3D together (FedAvg through NVFlare's simulator, plain
and with HE) or alone, for the same number of optimizer steps per site.

Each site trains on some structures of its image and holds out others (structures the default model's
pre-training held out too); the figure is the Dice of a model on the site's held-out structures, measured
by the fine-tune job's own validation (fixed-seed simulated clicks). HE's cost is each round's time and the
bytes of the sites' updates, against plain FedAvg.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.io import write_text_atomic

#: site -> (source folder, structures trained on, held-out structures). The held-out ones were held out of
#: the default DeepGrow 3D model's pre-training too.
SITES: dict[str, tuple[str, list[str], list[str]]] = {
    "ct-hospital": ("ct_abdomen_3mm", ["liver", "stomach", "kidney_right", "aorta", "iliopsoas_right"],
                    ["spleen", "kidney_left", "gallbladder"]),
    "mr-abdomen": ("mr_abdomen_3mm", ["stomach", "kidney_right", "pancreas", "aorta", "autochthon_left"],
                   ["spleen", "kidney_left", "liver"]),
    "mr-brain": ("mr_brain_1mm", ["left_thalamus", "right_caudate", "right_hippocampus", "left_lateral_ventricle",
                                  "brain_stem"],
                 ["left_hippocampus", "right_thalamus", "left_putamen"]),
}
#: Job settings of every site (one crop per image and step, so a round is cheap on one CPU thread).
OVERRIDES = {"training#batch_size": 1, "crops_per_image": 1, "validation_samples": 8}


def write_site_data(data_dir: Path, out: Path, sites: dict[str, tuple[str, list[str], list[str]]] = SITES) -> dict[str, str]:
    """Write each site's label maps (trained / held-out structures) and a ``{training, validation}`` datalist."""
    from claraseg.io import LabelInfo, read_image, read_labels_json, write_image

    datalists = {}
    for site, (source, train, held) in sites.items():
        folder = out / site
        folder.mkdir(parents=True, exist_ok=True)
        label = read_image(data_dir / source / "label.nii.gz", label=True)
        names = {info.name: v for v, info in read_labels_json(data_dir / source / "labels.json").items()}
        entries = {}
        for part, structures in (("training", train), ("validation", held)):
            values = {names[s]: s for s in structures}
            array = np.where(np.isin(label.array, list(values)), label.array, 0).astype(np.uint8)
            write_image(label.with_array(array, labels={v: LabelInfo(n) for v, n in values.items()}),
                        folder / f"{part}_label.nii.gz")
            entries[part] = [{"image": str(data_dir / source / "image.nii.gz"), "label": str(folder / f"{part}_label.nii.gz"),
                              "labels": {str(v): n for v, n in values.items()}}]
        write_text_atomic(folder / "datalist.json", json.dumps(entries, indent=1))
        datalists[site] = str(folder / "datalist.json")
    return datalists


def _rounds(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"round": r["round"], "time_s": r["time_s"], "aggregate_time_s": r.get("aggregate_time_s"),
             "bytes_up": r["bytes_up"], "global_dice": r["global_dice"], "local_dice": r["local_dice"],
             "sites": {s: {k: v.get(k) for k in ("global_dice", "local_dice", "loss", "time_s", "bytes_up")}
                       for s, v in r["sites"].items()}} for r in status["rounds"]]


def run_bench(data_dir: Path, workdir: Path, bundle: Path, rounds: int = 5, local_iterations: int = 10,
              threads: int = 1, he: bool = True, alone: bool = True, log=print) -> dict[str, Any]:
    """Run the federation (plain, then HE) and each site alone; returns the figures (see module doc)."""
    from claraseg.federated.job import create_job, simulate
    from claraseg.federated.local import fine_tune_round
    from claraseg.federated.spec import FederatedSpec

    workdir.mkdir(parents=True, exist_ok=True)
    datalists = write_site_data(data_dir, workdir / "data")
    result: dict[str, Any] = {
        "benchmark": "claraseg federate bench", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_start": os.getloadavg()},
        "bundle": str(bundle), "rounds": rounds, "local_iterations": local_iterations, "threads_per_site": threads,
        "overrides": OVERRIDES, "sites": {s: {"source": v[0], "train": v[1], "heldout": v[2]} for s, v in SITES.items()},
        "runs": {}}
    for variant in ["plain", "he"] if he else ["plain"]:
        job_dir = workdir / f"federated_{variant}"
        if job_dir.exists():
            shutil.rmtree(job_dir)
        registry = workdir / f"models_{variant}"
        if registry.exists():
            shutil.rmtree(registry)
        registry.mkdir(parents=True)
        spec = FederatedSpec(bundle=str(bundle), sites=datalists, rounds=rounds, local_iterations=local_iterations,
                             overrides=OVERRIDES, he=variant == "he", device="cpu", threads=threads,
                             registry=str(registry), name="deepgrow3d")
        create_job(spec, job_dir)
        log(f"federation ({variant}): {len(datalists)} sites x {rounds} rounds x {local_iterations} iterations")
        t0 = time.time()
        status = simulate(job_dir)
        run = {"wall_time_s": round(time.time() - t0, 1), "published": status["published"],
               "rounds": _rounds(status), "final": status["final"]}
        times = [r["time_s"] for r in status["rounds"]]
        run["median_round_time_s"] = float(np.median(times))
        run["median_round_time_after_first_s"] = float(np.median(times[1:])) if len(times) > 1 else None
        run["bytes_up_per_round"] = int(np.median([r["bytes_up"] for r in status["rounds"]]))
        result["runs"][variant] = run
        log(f"  done in {run['wall_time_s']} s: final Dice {status['final']}")
    if alone:
        alone_runs = {}
        for index, (site, datalist) in enumerate(datalists.items()):
            out = workdir / "alone" / site
            if out.exists():
                shutil.rmtree(out)
            log(f"{site} alone: {rounds * local_iterations} iterations")
            r = fine_tune_round(bundle, datalist, None, rounds * local_iterations, out, overrides=OVERRIDES,
                                device="cpu", threads=threads, seed=1000 * index)
            alone_runs[site] = {"baseline_dice": r.global_dice, "dice": r.local_dice, "per_label": r.per_label,
                                "time_s": round(r.time_s, 1)}
        result["runs"]["alone"] = alone_runs
    result["summary"] = summary(result)
    result["machine"]["load_avg_end"] = os.getloadavg()
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Per site: the default model, each site alone, the federated global model (plain and HE), and HE's cost."""
    runs = result["runs"]
    plain = runs.get("plain") or {}
    first = (plain.get("rounds") or [{}])[0].get("sites", {})
    out: dict[str, Any] = {"sites": {}}
    for site in result["sites"]:
        row = {"default_model": first.get(site, {}).get("global_dice"),
               "alone": (runs.get("alone") or {}).get(site, {}).get("dice"),
               "federated": ((plain.get("final") or {}).get("sites") or {}).get(site, {}).get("dice")}
        if "he" in runs:
            row["federated_he"] = ((runs["he"].get("final") or {}).get("sites") or {}).get(site, {}).get("dice")
        out["sites"][site] = row
    for key in ("default_model", "alone", "federated", "federated_he"):
        values = [r.get(key) for r in out["sites"].values() if r.get(key) is not None]
        out.setdefault("mean", {})[key] = float(np.mean(values)) if values else None
    if "he" in runs and plain:
        he = runs["he"]
        out["he_cost"] = {
            "median_round_time_s": {"plain": plain["median_round_time_s"], "he": he["median_round_time_s"]},
            "median_round_time_after_first_s": {"plain": plain["median_round_time_after_first_s"],
                                                "he": he["median_round_time_after_first_s"]},
            "bytes_up_per_round": {"plain": plain["bytes_up_per_round"], "he": he["bytes_up_per_round"]},
            "bytes_ratio": he["bytes_up_per_round"] / max(1, plain["bytes_up_per_round"]),
            "round_time_ratio": he["median_round_time_s"] / max(1e-9, plain["median_round_time_s"]),
            "wall_time_s": {"plain": plain["wall_time_s"], "he": he["wall_time_s"]},
        }
    return out
