"""Training benchmarks (results in results/train/, commands in docs/training.md).

- :func:`bench_cache`: epoch time of the same segmentation job (same seed) with a plain dataset, MONAI's
  ``CacheDataset`` and ``SmartCacheDataset``; preprocessing is realistically heavy (load, reorient,
  resample to 1.5 mm, normalise, 2 crops per image). Also iterations/s and peak memory.
- :func:`bench_adapt`: fine-tune DeepGrow 3D on structures of the sample CT for a CPU time budget and
  compare the click-protocol Dice (ANCHORS.md, :mod:`claraseg.evaluate.protocol`) of the starting and
  the fine-tuned model on held-out slices of those structures.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.io import (
    LabelInfo,
    crop,
    make_phantom,
    read_image,
    read_labels_json,
    write_image,
    write_text_atomic,
)

#: The structures of the benchmark segmentation bundle (names of the sample CT's labels).
CACHE_LABELS = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "stomach"}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_avg_1m_start": os.getloadavg()[0], "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _keep(label, names: dict[int, str], keep: set[str]):
    values = [v for v, n in names.items() if n in keep]
    array = np.where(np.isin(label.array, values), label.array, 0).astype(np.uint8)
    return label.with_array(array, labels={v: LabelInfo(names[v]) for v in values})


def _job_figures(job) -> dict[str, Any]:
    events = job.events()
    epochs = [e for e in events if e["event"] == "epoch"]
    its = [e for e in events if e["event"] == "iteration"]
    start = next(e["t"] for e in events if e["event"] == "state" and e["state"] == "training")
    baseline = next(e["t"] for e in events if e["event"] == "validation" and e.get("baseline"))
    final = [e for e in events if e["event"] == "state" and e["state"] in ("completed", "failed")][-1]
    prep = next(e["t"] for e in events if e["event"] == "info" and e["message"] == "data prepared")
    # Wall time per iteration from the first to the last one: includes waiting for Smart Cache replacements
    # between epochs, which the epoch times leave out.
    per_it = (its[-1]["t"] - its[0]["t"]) / (len(its) - 1) if len(its) > 1 else None
    return {"state": final["state"], "epoch_times_s": [e["time_s"] for e in epochs],
            "mean_epoch_s": float(np.mean([e["time_s"] for e in epochs])) if epochs else None,
            "iterations_per_epoch": len(its) / len(epochs) if epochs else None,
            "wall_s_per_iteration": round(per_it, 3) if per_it else None,
            "dataset_build_s": round(start - baseline, 2), "data_check_s": round(prep - events[0]["t"], 2),
            "iterations": len(its), "its_per_s": final.get("its_per_s"), "peak_memory_mb": final.get("peak_memory_mb"),
            "final_loss": its[-1]["loss"] if its else None, "wall_s": round(final["t"] - events[0]["t"], 2)}


def bench_cache(data_dir: Path, workdir: Path, threads: int = 2, epochs: int = 4, phantoms: int = 4) -> dict[str, Any]:
    """Plain vs cached vs Smart Cache datasets on the same job; returns the figures (see module doc)."""
    import torch

    from claraseg.models.bundle import read_bundle
    from claraseg.models.defaults import create_bundle
    from claraseg.train.job import FineTuneJob

    workdir.mkdir(parents=True, exist_ok=True)
    # A small network, so that - as on a GPU - the step itself is quick and the data pipeline matters.
    net = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 6, "channels": [4, 8, 16],
           "strides": [2, 2], "num_res_units": 0}
    bundle = create_bundle(workdir / "models" / "segmentation", "segmentation", network=net,
                           settings={"labels": CACHE_LABELS, "roi_size": [48, 48, 48], "spacing": [1.5, 1.5, 1.5]})
    torch.manual_seed(0)
    torch.save(read_bundle(bundle).build_network().state_dict(), bundle / "models" / "model.pt")
    keep = set(CACHE_LABELS.values())
    ct = read_image(data_dir / "ct_abdomen_3mm" / "image.nii.gz")
    ct_label = read_image(data_dir / "ct_abdomen_3mm" / "label.nii.gz", label=True)
    names = {v: i.name for v, i in read_labels_json(data_dir / "ct_abdomen_3mm" / "labels.json").items()}
    write_image(ct, workdir / "ct.nii.gz")
    write_image(_keep(ct_label, names, keep), workdir / "ct_label.nii.gz")
    entries = [{"image": str(workdir / "ct.nii.gz"), "label": str(workdir / "ct_label.nii.gz")}]
    for seed in range(phantoms):
        image, label = make_phantom(seed=100 + seed, size_ijk=(128, 128, 80))
        write_image(image, workdir / f"ph{seed}.nii.gz")
        write_image(_keep(label, {v: i.name for v, i in label.labels.items()}, keep), workdir / f"ph{seed}_label.nii.gz")
        entries.append({"image": str(workdir / f"ph{seed}.nii.gz"), "label": str(workdir / f"ph{seed}_label.nii.gz")})
    # The held-out case is a small phantom: validation is not what is measured here.
    image, label = make_phantom(seed=99, size_ijk=(48, 48, 32))
    write_image(image, workdir / "val.nii.gz")
    write_image(_keep(label, {v: i.name for v, i in label.labels.items()}, keep), workdir / "val_label.nii.gz")
    datalist = {"training": entries, "validation": [{"image": str(workdir / "val.nii.gz"),
                                                     "label": str(workdir / "val_label.nii.gz")}]}
    write_text_atomic(workdir / "datalist.json", json.dumps(datalist))
    results: dict[str, Any] = {"machine": machine(), "threads": threads, "training_cases": len(entries),
                               "preprocessing": "load NIfTI, RAS, resample to 1.5 mm (CT 3 mm -> 244x202x224), "
                                                "window, foreground indices | random: 2 pos/neg crops 48^3, flip, scale",
                               "job": {"batch_size": 2, "crops_per_image": 2, "roi": [48, 48, 48], "spacing_mm": 1.5,
                                       "max_epochs": epochs, "network": net}, "runs": {}}
    for kind, extra in (("plain", {}), ("cache", {}), ("smart", {"training#cache_rate": 0.5, "training#replace_rate": 0.5})):
        overrides = {"training#dataset": kind, "training#max_epochs": epochs, "training#max_iterations": 10**6,
                     "training#batch_size": 2, "crops_per_image": 2, "training#val_interval": 10**6,
                     "training#publish": False, "training#deterministic": True, "training#seed": 1, **extra}
        job = FineTuneJob(bundle, workdir / "datalist.json", overrides, workdir / f"job_{kind}_{int(time.time())}",
                          threads=threads, device="cpu").start()
        job.wait()
        results["runs"][kind] = _job_figures(job)
    return add_speedups(results)


def add_speedups(results: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups against the plain dataset: per epoch (the same items for ``cache``; Smart Cache epochs
    cover only its window) and per iteration (same batch size; wall time, replacement waits included)."""
    plain = results["runs"]["plain"]
    for kind in ("cache", "smart"):
        r = results["runs"][kind]
        r["epoch_speedup_vs_plain"] = round(plain["mean_epoch_s"] / r["mean_epoch_s"], 2) if r["mean_epoch_s"] else None
        if r.get("wall_s_per_iteration") and plain.get("wall_s_per_iteration"):
            r["iteration_speedup_vs_plain"] = round(plain["wall_s_per_iteration"] / r["wall_s_per_iteration"], 2)
    return results


def heldout_slices(label, value: int) -> tuple[np.ndarray, int, int, int]:
    """Split a structure at the middle of its slice range: ``(mask, k_lo, k_mid, k_hi)``; the slices
    below ``k_mid`` are trained on, the others held out."""
    mask = label.array == value
    ks = np.flatnonzero(mask.any(axis=(1, 2)))
    lo, hi = int(ks.min()), int(ks.max()) + 1
    return mask, lo, (lo + hi) // 2, hi


#: Structures of the sample CT that ``bench-adapt`` never tunes and tests for forgetting (several sizes,
#: organs, a vessel and a bone).
UNTUNED = ("liver", "kidney_right", "stomach", "aorta", "vertebrae_L3")


def _slab(image, label, value: int, name: str, k0: int, k1: int, path_stem: Path) -> dict[str, str]:
    """Write the slices ``[k0, k1)`` of the image and of one structure's binary label; the datalist entry."""
    ni, nj, _ = image.size_ijk
    sub = crop(image, [0, 0, k0], [ni, nj, k1])
    lab = crop(label, [0, 0, k0], [ni, nj, k1])
    mask = (lab.array == value).astype(np.uint8)
    write_image(sub, path_stem.with_name(path_stem.name + "_image.nii.gz"))
    write_image(lab.with_array(mask, labels={1: LabelInfo(name)}), path_stem.with_name(path_stem.name + "_label.nii.gz"))
    return {"image": str(path_stem.with_name(path_stem.name + "_image.nii.gz")),
            "label": str(path_stem.with_name(path_stem.name + "_label.nii.gz"))}


def bench_adapt(data_dir: Path, workdir: Path, bundle: Path, structures: list[str], threads: int = 2,
                budget_s: float | None = 540.0, interactions: int = 5, overrides: dict[str, Any] | None = None,
                untuned: list[str] | tuple[str, ...] = UNTUNED, iterations: int | None = None,
                guard: bool = True, noise_seeds: int = 0, noise_scale: float = 1e-3,
                replay_untuned: bool = False, click_sequences: int = 1, refit: bool = True,
                test_alphas: tuple[float, ...] = ()) -> dict[str, Any]:
    """Fine-tune an interactive bundle on the lower half (in slices) of each structure of the sample CT and
    evaluate the click protocol before and after on the upper half; each part in an image cropped to it.

    The lower half is split again: its first two thirds are trained on, the last third is the job's
    validation (which picks the checkpoint to publish), so the upper half is never seen before the test.
    The ``untuned`` structures are never trained on: their lower halves are the job's guard cases (no
    structure may lose more than ``training#max_label_drop`` there), their upper halves are tested
    before/after like the tuned ones (``guard=False``: tested only, not given to the job). ``replay_untuned``:
    the first two thirds of each untuned lower half are the datalist's ``replay`` scans (rehearsed while
    training), the last third its guard. ``click_sequences`` > 1 also tests each structure by that many
    click sequences (the protocol's own and ones with a first click drawn inside the structure:
    ``first_click_seed``), reported as ``*_mean`` beside the protocol's own sequence.
    ``iterations`` fixes the number of optimizer steps (reproducible);
    ``budget_s`` stops the training earlier after that much time. ``noise_seeds`` > 0 also measures the
    test's own precision (:func:`perturbation_floor`): the same protocol with the starting model's weights
    each multiplied by ``1 + noise_scale * N(0, 1)``. ``refit``: the models folder holds the bundle's shape
    re-fit model (DEXTR3D, ``shape_refit_model``) beside it, as a user's registry does, so the clicks of
    the test and of the job's validation are re-fit as a user's are; False: the bundle's copy names no
    re-fit model (its clicks run without the re-fit). ``test_alphas`` (a job with ``training#wise``): also
    test the interpolations of the starting weights and the job's end weights at these weights, whatever
    the job chose (reported under ``interpolations``, never used to choose)."""
    import shutil

    from claraseg.engine.backend import LocalBackend
    from claraseg.evaluate.protocol import run_structure
    from claraseg.models.bundle import read_bundle
    from claraseg.train.job import FineTuneJob

    workdir.mkdir(parents=True, exist_ok=True)
    models = workdir / "models"
    if models.exists():
        shutil.rmtree(models)
    start = models / bundle.name.split("@")[0]
    shutil.copytree(bundle, start)
    kind = read_bundle(start).kind
    from claraseg.train.clickval import copy_shape_refit

    if refit:
        refit_model = copy_shape_refit(bundle, models)
    else:
        meta_path = start / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        (meta.get("claraseg") or {}).pop("shape_refit_model", None)
        write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
        refit_model = None
    image = read_image(data_dir / "ct_abdomen_3mm" / "image.nii.gz")
    label = read_image(data_dir / "ct_abdomen_3mm" / "label.nii.gz", label=True)
    names = {v: i.name for v, i in read_labels_json(data_dir / "ct_abdomen_3mm" / "labels.json").items()}
    by_name = {n: v for v, n in names.items()}
    overlap = sorted(set(structures) & set(untuned))
    if overlap:
        raise ValueError(f"structures {overlap} are both tuned and untuned")
    nk = image.size_ijk[2]
    # Per structure: the image below the middle of its slice range is trained on (or guards), the image
    # above held out; both are cropped there, so a label never stops inside the image where the organ goes on.
    train_entries, val_entries, guard_entries, replay_entries, tests = [], [], [], [], []
    for name in structures:
        _mask, lo, mid, hi = heldout_slices(label, by_name[name])
        q = min(lo + max(1, (2 * (mid - lo)) // 3), mid - 1)
        train_entries.append(_slab(image, label, by_name[name], name, 0, q, workdir / f"train_{name}"))
        val_entries.append(_slab(image, label, by_name[name], name, q, mid, workdir / f"val_{name}"))
        _slab(image, label, by_name[name], name, mid, nk, workdir / f"heldout_{name}")
        tests.append((name, mid, nk, True))
    for name in untuned:
        _mask, lo, mid, hi = heldout_slices(label, by_name[name])
        if replay_untuned:
            q = min(lo + max(1, (2 * (mid - lo)) // 3), mid - 1)
            replay_entries.append(_slab(image, label, by_name[name], name, 0, q, workdir / f"replay_{name}"))
            guard_entries.append(_slab(image, label, by_name[name], name, q, mid, workdir / f"guard_{name}"))
        else:
            guard_entries.append(_slab(image, label, by_name[name], name, 0, mid, workdir / f"guard_{name}"))
        _slab(image, label, by_name[name], name, mid, nk, workdir / f"heldout_{name}")
        tests.append((name, mid, nk, False))
    # The job validates on the slabs between the trained and the tested slices, and guards the lower
    # halves of the untuned structures.
    datalist = {"training": train_entries, "validation": val_entries, "guard": guard_entries if guard else [],
                "replay": replay_entries}
    # Validation every training#val_interval iterations of the bundle's fine-tune settings (or overrides).
    settings = {"training#max_time_s": budget_s, "training#max_iterations": iterations or 10**6,
                "training#checkpoint_interval": 25, **(overrides or {})}
    t0 = time.time()
    job = FineTuneJob(start, datalist, settings, workdir / f"job_{int(t0)}", threads=threads, device="cpu").start()
    status = job.wait()
    train_wall = time.time() - t0
    if status["state"] != "completed":
        raise RuntimeError(f"the fine-tune job did not complete: {status}")
    backend = LocalBackend(models, device="cpu", idle_timeout=None)
    base = start.name
    # Nothing published (no checkpoint kept every structure within training#max_label_drop): the user
    # keeps the starting model, which is then what "after" measures.
    published = status["published"] or f"{base}@v1"
    per: dict[str, Any] = {}
    for name, mid, hi, tuned in tests:
        sub = read_image(workdir / f"heldout_{name}_image.nii.gz")
        truth = read_image(workdir / f"heldout_{name}_label.nii.gz", label=True).array > 0
        session = backend.open_session(sub)
        try:
            row: dict[str, Any] = {}
            for tag, model in (("before", f"{base}@v1"), ("after", published)):
                if tag == "after" and model == f"{base}@v1":
                    row[tag], row["runs_after"] = row["before"], row["runs_before"]
                    continue
                runs = [[round(float(d), 4) for d in run_structure(
                    session, model, kind, truth, name=name, interactions=interactions,
                    first_click_seed=seed or None, object_id=f"eval-{seed}").dice] for seed in range(click_sequences)]
                row[tag], row[f"runs_{tag}"] = runs[0], runs
            per[name] = {"tuned": tuned, "heldout_slices_k": [mid, hi], "voxels": int(truth.sum()),
                         "before": row["before"], "after": row["after"],
                         "change_at_last": round(row["after"][-1] - row["before"][-1], 4)}
            if click_sequences > 1:
                for tag in ("before", "after"):
                    per[name][f"{tag}_mean"] = [round(float(v), 4) for v in np.mean(row[f"runs_{tag}"], axis=0)]
                    per[name][f"{tag}_sequences"] = row[f"runs_{tag}"]
                per[name]["change_at_last_mean"] = round(per[name]["after_mean"][-1] - per[name]["before_mean"][-1], 4)
        finally:
            session.close()
    floor = perturbation_floor(models, base, kind, workdir, [t[0] for t in tests], per, interactions,
                               noise_seeds, noise_scale, click_sequences) if noise_seeds else None
    interpolations = evaluate_interpolations(models, base, kind, workdir, job.workdir / "checkpoints" / "end.pt",
                                         [t[0] for t in tests], per, interactions, test_alphas,
                                         click_sequences) if test_alphas else None
    backend.close()
    events = job.events()
    final = [e for e in events if e["event"] == "state" and e["state"] == "completed"][-1]
    import hashlib

    def means(rows: dict[str, Any]) -> dict[str, Any]:
        if not rows:
            return {}
        return {"mean_dice_curve": {t: [round(float(np.mean([v[t][i] for v in rows.values()])), 4)
                                        for i in range(interactions)] for t in ("before", "after")},
                "mean_dice_at_last_interaction": {t: round(float(np.mean([v[t][-1] for v in rows.values()])), 4)
                                                  for t in ("before", "after")},
                "worst_change_at_last": min(v["change_at_last"] for v in rows.values()),
                **({"mean_dice_curve_over_sequences": {
                    t: [round(float(np.mean([v[f"{t}_mean"][i] for v in rows.values()])), 4)
                        for i in range(interactions)] for t in ("before", "after")},
                    "worst_change_at_last_mean": min(v["change_at_last_mean"] for v in rows.values())}
                   if click_sequences > 1 else {})}

    tuned_rows = {k: v for k, v in per.items() if v["tuned"]}
    untuned_rows = {k: v for k, v in per.items() if not v["tuned"]}
    weights = start / "models" / "model.pt"
    settings_event = next((e for e in events if e.get("message") == "configuration validated"), {})
    return {"machine": machine(), "threads": threads, "bundle": str(bundle), "kind": kind, "structures": structures,
            "untuned": list(untuned), "guard": guard,
            "shape_refit_model": refit_model.name if refit_model else None, "replay_untuned": replay_untuned, "overrides": overrides or {}, "job_settings": settings_event.get("settings"),
            "tuned_parameters": settings_event.get("tuned_parameters"),
            "weights": {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:16],
                        "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(weights.stat().st_mtime))},
            "budget_s": budget_s, "train_wall_s": round(train_wall, 1), "iterations": final["iteration"],
            "its_per_s": final.get("its_per_s"), "peak_memory_mb": final.get("peak_memory_mb"),
            "validation_dice": {"baseline": final.get("baseline_dice"), "best": final.get("best_dice"),
                                "best_iteration": final.get("best_iteration"),
                                "per_structure": [{"iteration": e["iteration"], **{k: round(v, 4) for k, v in
                                                                                 e["per_label"].items()},
                                                   **{f"guard:{k}": round(v, 4) for k, v in
                                                      (e.get("guard") or {}).items()}}
                                                  for e in events if e["event"] == "validation"],
                                "refused_as_best": [{"iteration": e["iteration"], "lost": e["lost"]} for e in events
                                                    if e.get("message", "").startswith("not kept as best")]},
            "published": status["published"], "publish_skipped": final.get("publish_skipped"),
            "interactions": interactions, **means(tuned_rows), "untuned_summary": means(untuned_rows),
            "worst_change_at_last_any_structure": min(v["change_at_last"] for v in per.values()),
            "click_sequences": click_sequences,
            **({"worst_change_at_last_mean_any_structure": min(v["change_at_last_mean"] for v in per.values())}
               if click_sequences > 1 else {}),
            "per_structure": per, "job": str(job.workdir), "weight_change": weight_change(models, base, published),
            **({"noise_floor": floor} if floor else {}),
            **({"interpolations": interpolations} if interpolations else {})}


def weight_change(models: Path, base: str, published: str) -> dict[str, float] | None:
    """How far the published weights moved: ``||w - w0|| / ||w0||`` over all floating-point tensors."""
    from claraseg.models.bundle import read_weights

    folder = models / (base if published == f"{base}@v1" else published)
    if not (folder / "models" / "model.pt").is_file():
        return None
    w0 = read_weights(models / base / "models" / "model.pt")
    w = read_weights(folder / "models" / "model.pt")
    keys = [k for k in w0 if w0[k].is_floating_point()]
    num = sum(float(((w[k].float() - w0[k].float()) ** 2).sum()) for k in keys)
    den = sum(float((w0[k].float() ** 2).sum()) for k in keys)
    return {"relative_l2": round((num / den) ** 0.5, 6)}


def _test_state(models: Path, base: str, kind: str, workdir: Path, state: dict[str, Any], folder: Path,
                names: list[str], interactions: int, click_sequences: int) -> dict[str, list[list[float]]]:
    """The click protocol on the held-out slices of ``names`` with the bundle ``base`` of ``models`` given
    the weights ``state`` (a copy in ``folder``, beside the models folder's other bundles, e.g. the
    shape re-fit model): ``{name: [Dice curve per click sequence]}``."""
    import shutil

    import torch

    from claraseg.engine.backend import LocalBackend
    from claraseg.evaluate.protocol import run_structure

    if folder.exists():
        shutil.rmtree(folder)
    for other in models.iterdir():
        if other.is_dir() and other.name != base and "@" not in other.name:
            shutil.copytree(other, folder / other.name)
    shutil.copytree(models / base, folder / base, ignore=shutil.ignore_patterns("*.pt", "*.onnx", "*.ts"))
    torch.save(state, folder / base / "models" / "model.pt")
    out: dict[str, list[list[float]]] = {}
    backend = LocalBackend(folder, device="cpu", idle_timeout=None)
    try:
        for name in names:
            sub = read_image(workdir / f"heldout_{name}_image.nii.gz")
            truth = read_image(workdir / f"heldout_{name}_label.nii.gz", label=True).array > 0
            session = backend.open_session(sub)
            try:
                out[name] = [[round(float(d), 4) for d in run_structure(
                    session, base, kind, truth, name=name, interactions=interactions, first_click_seed=s or None,
                    object_id=f"eval-{s}").dice] for s in range(click_sequences)]
            finally:
                session.close()
    finally:
        backend.close()
    return out


def evaluate_interpolations(models: Path, base: str, kind: str, workdir: Path, end_path: Path, names: list[str],
                        per: dict[str, Any], interactions: int, alphas: tuple[float, ...],
                        click_sequences: int = 1) -> dict[str, Any]:
    """The test at each weight ``a`` of ``alphas`` of the interpolation ``w0 + a * (w_end - w0)`` between the
    starting weights and a job's end weights (``checkpoints/end.pt`` of a job with ``training#wise``):
    per structure the change after the last click against the starting model (mean over the click
    sequences), the worst and the tuned structures' mean. Reported beside what the job chose, never used
    to choose."""
    from claraseg.models.bundle import read_weights
    from claraseg.train.wise import interpolate_weights

    if not end_path.is_file():
        return {"error": f"{end_path} is missing: the job ran without training#wise"}
    start = {k: v.float() if v.is_floating_point() else v for k, v in read_weights(models / base / "models" / "model.pt").items()}
    end = read_weights(end_path)
    out: dict[str, Any] = {}
    for alpha in alphas:
        runs = _test_state(models, base, kind, workdir, interpolate_weights(start, end, float(alpha)),
                           workdir / "interpolated", names, interactions, click_sequences)
        change = {n: round(float(np.mean([r[-1] for r in runs[n]])) - per[n][
            "before_mean" if click_sequences > 1 else "before"][-1], 4) for n in names}
        tuned = [n for n in names if per[n]["tuned"]]
        out[f"{alpha:g}"] = {"change_at_last_mean": change, "worst": min(change.values()),
                             "tuned_mean_change": round(float(np.mean([change[n] for n in tuned])), 4),
                             "tuned_mean_curve": [round(float(np.mean([np.mean([r[i] for r in runs[n]]) for n in tuned])), 4)
                                                  for i in range(interactions)],
                             "sequences": runs}
    return out


def perturbation_floor(models: Path, base: str, kind: str, workdir: Path, names: list[str], per: dict[str, Any],
                       interactions: int, seeds: int, scale: float, click_sequences: int = 1) -> dict[str, Any]:
    """The test's precision: the click protocol on the same held-out slices with the starting model's
    weights each multiplied by ``1 + scale * N(0, 1)`` (``seeds`` draws), as the Dice change per structure
    after the last click against the unperturbed model. A change a model this close to the starting one
    makes is noise of the protocol (one deterministic click sequence per structure), not learning.
    ``click_sequences`` > 1: also the change of the mean over that many sequences (``change_at_last_mean``)."""
    import torch

    from claraseg.models.bundle import read_weights

    start = read_weights(models / base / "models" / "model.pt")
    changes: dict[str, list[float]] = {n: [] for n in names}
    mean_changes: dict[str, list[float]] = {n: [] for n in names}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        state = {k: (v.float() * (1 + scale * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v)
                 for k, v in start.items()}
        runs = _test_state(models, base, kind, workdir, state, workdir / "perturbed", names, interactions,
                           click_sequences)
        for name in names:
            last = [r[-1] for r in runs[name]]
            changes[name].append(round(last[0] - per[name]["before"][-1], 4))
            if click_sequences > 1:
                mean_changes[name].append(round(float(np.mean(last)) - per[name]["before_mean"][-1], 4))

    def summary(found: dict[str, list[float]]) -> dict[str, float]:
        every = [abs(c) for v in found.values() for c in v]
        return {"median_abs_change": round(float(np.median(every)), 4), "max_abs_change": round(float(max(every)), 4),
                "share_beyond_0.02": round(float(np.mean([c > 0.02 for c in every])), 3)}

    out = {"scale": scale, "seeds": seeds, "change_at_last": changes, **summary(changes)}
    if click_sequences > 1:
        out["click_sequences"] = click_sequences
        out["change_at_last_mean"] = mean_changes
        out["mean_over_sequences"] = summary(mean_changes)
    return out


def bench_throughput(data_dir: Path, workdir: Path, bundles: list[Path], threads: int = 2, iterations: int = 20,
                     structures: tuple[str, ...] = ("liver", "spleen", "kidney_right", "kidney_left", "stomach")
                     ) -> dict[str, Any]:
    """Iterations/s and peak memory of the default job of each bundle (its default settings) on the sample CT."""
    from claraseg.models.bundle import read_bundle
    from claraseg.train.job import FineTuneJob

    workdir.mkdir(parents=True, exist_ok=True)
    label = read_image(data_dir / "ct_abdomen_3mm" / "label.nii.gz", label=True)
    names = {v: i.name for v, i in read_labels_json(data_dir / "ct_abdomen_3mm" / "labels.json").items()}
    write_image(_keep(label, names, set(structures)), workdir / "label.nii.gz")
    ct = str(data_dir / "ct_abdomen_3mm" / "image.nii.gz")
    entry = {"image": ct, "label": str(workdir / "label.nii.gz")}
    out: dict[str, Any] = {"machine": machine(), "threads": threads, "iterations": iterations, "jobs": {}}
    for bundle in bundles:
        if not (bundle / "configs" / "metadata.json").is_file():
            # Speed does not depend on the weights: the default configs of that kind, random weights.
            from claraseg.models.defaults import create_bundle

            bundle = create_bundle(workdir / "default_configs" / bundle.name, bundle.name)
        b = read_bundle(bundle)
        overrides = {"training#max_iterations": iterations, "training#val_interval": 10**6, "training#publish": False}
        # Segmentation jobs need a held-out case: the same CT serves (throughput only).
        datalist = {"training": [entry], "validation": [entry]}
        job = FineTuneJob(bundle, datalist, overrides, workdir / f"job_{b.name}_{int(time.time())}", threads=threads,
                          device="cpu").start()
        status = job.wait()
        events = job.events()
        settings = next(e["settings"] for e in events if e.get("message") == "configuration validated") \
            if status["state"] == "completed" else {}
        final = [e for e in events if e["event"] == "state"][-1]
        out["jobs"][b.name] = {"kind": b.kind, "state": status["state"], "its_per_s": final.get("its_per_s"),
                               "peak_memory_mb": final.get("peak_memory_mb"), "batch_size": settings.get("batch_size"),
                               "roi_size": b.settings.get("roi_size"), "error": status.get("error"),
                               "weights": (bundle / "models" / "model.pt").is_file()}
    return out
