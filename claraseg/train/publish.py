"""Publishing a fine-tuned model: the best checkpoint becomes a new version in the models registry.

The new bundle is staged completely inside the job folder (configs and ``scripts/`` of the starting
bundle, the best weights, metadata recording the job and its before/after Dice), then handed to the
engine's registry, whose ``publish`` makes it visible atomically and keeps the older versions.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from claraseg.io import write_text_atomic
from claraseg.train.spec import check_model_name


def base_name(bundle: Path, meta: dict[str, Any]) -> str:
    """The model name of a bundle folder (``liver@v3`` -> ``liver``)."""
    return bundle.name.split("@", 1)[0]


def bump_patch(version: str) -> str:
    """``"0.1.0"`` -> ``"0.1.1"`` (a version that is not x.y.z gets ``.1`` appended)."""
    parts = version.split(".")
    if len(parts) == 3 and parts[2].isdigit():
        return f"{parts[0]}.{parts[1]}.{int(parts[2]) + 1}"
    return version + ".1"


def stage_bundle(bundle: Path, meta: dict[str, Any], state: dict[str, torch.Tensor], out: Path,
                 record: dict[str, Any]) -> Path:
    """Write a complete bundle to ``out``: the starting bundle's files, the new weights, updated metadata."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("*.pt", "*.ts", "__pycache__", "eval", ".*"))
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state.items()}, out / "models" / "model.pt")
    new = copy.deepcopy(meta)
    section = new.setdefault("claraseg", {})
    history = list(section.get("fine_tune_history", []))
    if section.get("fine_tune"):
        history.append(section["fine_tune"])
    section["fine_tune"] = record
    section["fine_tune_history"] = history
    new["version"] = bump_patch(str(meta.get("version", "0.0.0")))
    new.setdefault("changelog", {})[new["version"]] = (
        f"fine-tuned by claraseg job {record['job']}: validation Dice {record['baseline_dice']} -> {record['best_dice']}")
    write_text_atomic(out / "configs" / "metadata.json", json.dumps(new, indent=2) + "\n")
    return out


def published_by(registry_root: Path, name: str, workdir: Path) -> str | None:
    """The version of ``name`` (``name`` or ``name@vN``) in the registry folder that this job published, if any."""
    root = Path(registry_root)
    if not root.is_dir():
        return None
    for d in sorted(root.iterdir()):
        if d.name != name and not re.fullmatch(re.escape(name) + r"@v[0-9]+", d.name):
            continue
        try:
            meta = json.loads((d / "configs" / "metadata.json").read_text())
        except (OSError, ValueError):
            continue
        ft = (meta.get("claraseg") or {}).get("fine_tune") or {}
        if ft.get("workdir") == str(workdir) and ft.get("job") == workdir.name:
            return d.name
    return None


def publish_best(bundle: Path, meta: dict[str, Any], state: dict[str, torch.Tensor], spec, workdir: Path,
                 baseline: float | None, best: dict[str, Any]) -> dict[str, Any]:
    """Stage the new version and publish it through :class:`claraseg.models.registry.ModelRegistry`.

    Returns the ``published`` event's fields: ``name`` (``<model>@vN``, selectable in every backend once
    its registry has reloaded), ``path``, ``registry``, ``baseline_dice``, ``best_dice``.
    """
    from claraseg.models.registry import ModelRegistry

    name = check_model_name(spec.name or base_name(bundle, meta))
    registry_root = Path(spec.registry) if spec.registry else bundle.parent
    prepared = json.loads((workdir / "data" / "prepared.json").read_text())
    record = {"job": workdir.name, "workdir": str(workdir), "parent": str(bundle),
              "parent_version": meta.get("version"), "baseline_dice": baseline, "best_dice": best["dice"],
              "best_iteration": best["iteration"],
              **({"wise_alpha": best["alpha"]} if best.get("alpha") is not None else {}), "train_cases": [c["source_label"] for c in prepared["train"]],
              "val_cases": [c["source_label"] for c in prepared["val"]], "overrides": spec.overrides,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    registry = ModelRegistry(registry_root)
    version = published_by(registry_root, name, workdir)
    if version is None:  # else a run of this job killed after its rename already published it: exactly once
        staged = stage_bundle(bundle, meta, state, workdir / "publish" / name, record)
        version = registry.publish(name, staged)
    return {"name": version, "path": str(registry.get(version).path), "registry": str(registry_root),
            "baseline_dice": baseline, "best_dice": best["dice"]}
