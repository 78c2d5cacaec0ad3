"""Default training configs per model kind, so a claraseg bundle fine-tunes without writing a train.json.

The job's config is layered, later layers winning (dicts merged, other values replaced):
``configs/inference.json`` (for ``network_def``) < these defaults < the bundle's ``configs/train.json``
< the job's overrides. Every constant comes from the bundle's ``claraseg`` metadata (``@_meta_#claraseg#...``).
"""

from __future__ import annotations

import copy
from typing import Any

from claraseg.errors import ConfigError


def _intensity(meta: dict[str, Any], inference: dict[str, Any]) -> dict[str, Any] | None:
    """The intensity transform: the ``claraseg.intensity`` spec (as the engine normalises), else the
    ``ScaleIntensityRanged`` of the bundle's inference preprocessing (model-zoo bundles)."""
    if (meta.get("claraseg") or {}).get("intensity"):
        return {"_target_": "claraseg.train.transforms.NormaliseIntensityd", "keys": "image",
                "spec": "@_meta_#claraseg#intensity"}
    steps = ((inference.get("preprocessing") or {}).get("transforms")) or []
    for step in steps:
        if isinstance(step, dict) and str(step.get("_target_", "")).endswith("ScaleIntensityRanged"):
            return {**{k: v for k, v in step.items() if not str(v).startswith("@")}, "keys": "image"}
    return None


def _load(meta: dict[str, Any], inference: dict[str, Any]) -> list[dict[str, Any]]:
    spacing = (meta.get("claraseg") or {}).get("spacing")
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": ["image", "label"], "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
        {"_target_": "Orientationd", "keys": ["image", "label"], "axcodes": "RAS"},
    ]
    if spacing:
        steps.append({"_target_": "Spacingd", "keys": ["image", "label"], "pixdim": "@_meta_#claraseg#spacing",
                      "mode": ["bilinear", "nearest"]})
    steps += [_intensity(meta, inference),
              {"_target_": "EnsureTyped", "keys": ["image", "label"], "dtype": ["$torch.float32", "$torch.uint8"],
               "track_meta": False}]
    return steps


def segmentation_config(meta: dict[str, Any], inference: dict[str, Any]) -> dict[str, Any]:
    """Supervised training as the bundle infers: RAS, the bundle's spacing and intensity window, then
    ``crops_per_image`` positive/negative crops of ``roi_size`` per image (batch-by-transform).
    Without a known intensity normalisation the bundle's train.json must give both pipelines."""
    base: dict[str, Any] = {
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network_def.parameters()", "lr": 1e-4},
        "crops_per_image": 2,
    }
    if _intensity(meta, inference) is None:
        return base
    load = _load(meta, inference)
    return {
        **base,
        "roi_size": "$@_meta_#claraseg#roi_size",
        # Foreground/background voxel lists are computed once (cached with the volume), not per crop.
        "train": {"preprocessing": {"_target_": "Compose", "transforms": load + [
            {"_target_": "FgBgToIndicesd", "keys": "label"},
            {"_target_": "RandCropByPosNegLabeld", "keys": ["image", "label"], "label_key": "label",
             "spatial_size": "@roi_size", "pos": 2, "neg": 1, "num_samples": "@crops_per_image",
             "fg_indices_key": "label_fg_indices", "bg_indices_key": "label_bg_indices", "allow_smaller": True},
            {"_target_": "SpatialPadd", "keys": ["image", "label"], "spatial_size": "@roi_size"},
            {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.2, "spatial_axis": 0},
            {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.3},
            {"_target_": "EnsureTyped", "keys": "label", "dtype": "$torch.int64"},
        ]}},
        "validate": {"preprocessing": {"_target_": "Compose", "transforms": load}},
    }


def recipe_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """A claraseg pretrain recipe (``configs/train.json`` with ``claraseg_recipe``: flat settings, not a MONAI
    config) as config layers: batch size, the fine-tuning learning rate (``finetune_learning_rate``;
    the pre-training ``learning_rate`` is for training from scratch and would wash out what the model
    knows) and ``finetune``, job settings of a fine-tune (``training#...``: e.g. ``trainable``, ``l2sp``);
    the rest stays readable as ``@recipe``."""
    out: dict[str, Any] = {"recipe": recipe}
    if "batch_size" in recipe:
        out["training"] = {"batch_size": int(recipe["batch_size"])}
    finetune = recipe.get("finetune")
    if finetune is not None:
        if not isinstance(finetune, dict):
            raise ConfigError(f"train.json 'finetune' must be an object of job settings (training#...), got {finetune!r}")
        out["training"] = {**out.get("training", {}), **copy.deepcopy(finetune)}
    if "finetune_learning_rate" in recipe:
        out["optimizer"] = {"lr": float(recipe["finetune_learning_rate"])}
    return out


def default_config(kind: str, meta: dict[str, Any], inference: dict[str, Any]) -> dict[str, Any]:
    """The default training config of a bundle of ``kind`` (interactive kinds: :mod:`claraseg.train.interactive`)."""
    if kind == "segmentation":
        return segmentation_config(meta, inference)
    if kind in ("deepgrow2d", "deepgrow3d", "dextr3d"):
        from claraseg.train.interactive import default_config as interactive

        return interactive(kind, meta)
    raise ConfigError(f"model kind {kind!r} cannot be fine-tuned; expected segmentation, deepgrow2d, deepgrow3d or dextr3d")


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: plain dicts (not components with ``_target_``) merged recursively."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "_target_" not in value:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
