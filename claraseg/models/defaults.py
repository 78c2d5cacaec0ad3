"""The default bundles' configurations: every pre/post-processing constant of each kind, once.

:func:`create_bundle` writes a bundle's configs (no weights); ``claraseg pretrain`` then trains the
weights into it, and :func:`claraseg.models.testing.make_tiny_bundle` uses it with a tiny network.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from claraseg.errors import ConfigError
from claraseg.models.bundle import DEXTR_CHANNELS, INFERENCE, METADATA, TRAIN, write_json_atomic
from claraseg.models.inference_config import interactive_inference

#: Intensity normalisation shared by the interactive models (see claraseg.models.preprocess).
INTENSITY = {
    "CT": {"type": "window", "window": [-250, 350]},
    "MR": {"type": "percentile", "percentiles": [0.5, 99.5], "clip_max": 1.5},
    "default": "MR",
}

#: What DeepGrow 2D and 3D share: inputs, ROI filling, guidance and post-processing.
_DEEPGROW_COMMON: dict[str, Any] = {
    "channels": ["image", "foreground", "background", "mask"],
    "fill": 0.7,
    "correction_fill": 0.45,
    "first_click_grow_passes": 2,
    "guidance": {"encoding": "gaussian", "sigma_mm": 3.0, "min_sigma_vox": 1.5},
    "intensity": INTENSITY,
    "threshold": 0.5,
    "keep_clicked_components": True,
    # The voxels within this distance of a click just placed take the click's label (so a late click the
    # network ignores still changes the mask).
    "click_radius_mm": 1.0,
    "min_points": 1,
    # The network forward on ONNX Runtime (torch when it is not installed): faster than torch on CPU, with
    # whole clicks' masks equal to torch's (results/bench_runtimes_2026-12-07.json, docs/runtimes.md).
    "runtime": "onnxruntime",
}

#: The claraseg section of each interactive kind.
SETTINGS: dict[str, dict[str, Any]] = {
    "deepgrow3d": {
        **_DEEPGROW_COMMON,
        "kind": "deepgrow3d",
        # Refinement ROIs at the training scale (``fill``).
        "correction_fill": 0.7,
        "roi_size": [64, 64, 64],
        # Training crops are smaller than the inference ROI (same spacing rules; the network is convolutional).
        "train_roi_size": [48, 48, 48],
        "spacing_range_mm": [0.6, 8.0],
        # The first click's field of view (64 x 2 mm).
        "first_click_spacing_mm": 2.0,
        # Shape re-fit: after each click, DEXTR3D re-segments the object from the result's extreme points
        # (reading the clicks and the result too); kept unless it agrees with the click's result by less
        # than this Dice (and see shape_refit_contradiction).
        "shape_refit_model": "dextr3d",
        "shape_refit_min_agreement": 0.5,
        # The re-fit is run again on its own result (3 passes; the first two with 2 test-time flips, which
        # only set the next box and mask, the last with DEXTR3D's own), from the DeepGrow 3D result cut at
        # ``threshold``. Training cut the network-in-the-loop clicks at the threshold its history records
        # (``settings_at_training``).
        "shape_refit_passes": 3,
        "shape_refit_tta_flips": 2,
        # The DeepGrow 3D result is cut at 0.4: a large organ's first result is a low-confidence blob around
        # the click, and a lower cut takes more of it (results/split_validation_first_click.json).
        "threshold": 0.4,
        # A re-fit that contradicts a click (a background click inside it, a foreground click outside) is
        # kept and the clicks are honoured on it ("honour"); "merge" takes the click's own result in the
        # region of the re-fit's additions (or removals) that holds the contradicted click; "refuse" leaves
        # the object to DeepGrow 3D alone, which drifts over many clicks.
        "shape_refit_contradiction": "honour",
        # The re-fit's result is cut at 0.55 (DEXTR3D on extreme points alone keeps its own 0.5).
        "shape_refit_threshold": 0.55,
        # Every click's result has its boundary re-decided at the image's resolution where the re-fit's
        # grid was coarser (elongated objects: up to 2x along their long axis): voxels within 1.5 ROI
        # voxels of the boundary follow the intensities of the object's core and of a ring outside it
        # unless the distance prior outweighs them (claraseg/engine/boundary.py).
        "boundary_refine": {"band": 1.0, "tau": 0.7, "ring": 4.0, "bins": 48},
    },
    "deepgrow2d": {
        **_DEEPGROW_COMMON,
        "kind": "deepgrow2d",
        # Test-time augmentation: probabilities averaged over the 4 flips of the slice, one batch.
        "tta_flips": 4,
        "roi_size": [128, 128, 1],
        "spacing_range_mm": [0.3, 4.0],
        # The first click's field of view (128 x 1 mm).
        "first_click_spacing_mm": 1.0,
    },
    "dextr3d": {
        "kind": "dextr3d",
        # Test-time augmentation: probabilities averaged over 4 flips of the ROI (none and each axis, one
        # batch); 8 gave the same validation figures within 0.005 for twice the network's work.
        "tta_flips": 4,
        "runtime": "onnxruntime",  # as DeepGrow's (docs/runtimes.md)
        # The boundary of every result is re-decided at the image's resolution where the ROI was coarser,
        # as for DeepGrow 3D.
        "boundary_refine": {"band": 1.0, "tau": 0.7, "ring": 4.0, "bins": 48},
        "roi_size": [48, 48, 48],
        # Image and extreme points, plus the object's clicks and current mask: clicks on an object made
        # from extreme points are corrected by this network (empty click/mask channels for the first result).
        "channels": list(DEXTR_CHANNELS[1]),
        "margin_mm": 8.0,
        # The crop is stretched to the ROI per axis, so sigma is in ROI voxels, not mm.
        "guidance": {"encoding": "gaussian", "sigma_vox": 2.0},
        "intensity": INTENSITY,
        "threshold": 0.5,
        "min_points": 6,
        # Clicks on an object without extreme points go to DeepGrow 3D (which uses this model for its re-fit).
        "correction_model": "deepgrow3d",
        # The voxels within this distance of a click take the click's label.
        "click_radius_mm": 1.0,
        "train_jitter_vox": 3,
    },
}

#: Networks (MONAI UNet, about 0.6 M parameters: small enough for CPU clicks).
NETWORKS: dict[str, dict[str, Any]] = {
    "deepgrow3d": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 4, "out_channels": 1,
                   "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
    "deepgrow2d": {"_target_": "UNet", "spatial_dims": 2, "in_channels": 4, "out_channels": 1,
                   "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
    "dextr3d": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 5, "out_channels": 1,
                "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
    "segmentation": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 6,
                     "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
}

#: The default segmentation bundle's structures (label value in the bundle -> name).
SEGMENTATION_LABELS = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "stomach"}
SEGMENTATION_SPACING = [3.0, 3.0, 3.0]
SEGMENTATION_ROI = [96, 96, 96]
SEGMENTATION_WINDOW = [-250, 350]

#: Training settings of each kind (recorded in configs/train.json and read by claraseg pretrain; a
#: fine-tune job starts from ``finetune_learning_rate`` and takes ``finetune`` as its ``training#`` settings).
TRAINING: dict[str, dict[str, Any]] = {
    "deepgrow3d": {"batch_size": 2, "learning_rate": 1e-3, "finetune_learning_rate": 5e-5, "loss": "DiceCELoss(sigmoid)", "p_model_in_loop": 0.6,
                   "max_loop_clicks": 5,
                   # Fine-tunes tune the decoder half of the UNet (the up-sampling blocks), pulled toward the
                   # starting weights (L2-SP), validated every 25 steps (docs/training.md, bench-adapt).
                   "finetune": {"trainable": ["(^|\\.)2\\."], "l2sp": 1.0, "val_interval": 25}},
    "deepgrow2d": {"batch_size": 8, "learning_rate": 1e-3, "finetune_learning_rate": 1e-4, "loss": "DiceCELoss(sigmoid)", "p_model_in_loop": 0.4,
                   "max_loop_clicks": 3},
    "dextr3d": {"batch_size": 2, "learning_rate": 1e-3, "finetune_learning_rate": 1e-4, "loss": "DiceCELoss(sigmoid)",
                "p_correction": 0.6, "p_model_in_loop": 0.5, "max_loop_clicks": 3},
    "segmentation": {"batch_size": 2, "learning_rate": 1e-3, "finetune_learning_rate": 1e-4, "loss": "DiceCELoss(softmax)"},
}

DESCRIPTIONS = {
    "deepgrow3d": "DeepGrow 3D: foreground/background clicks refine the object's current 3D mask (any structure, CT or MR)",
    "deepgrow2d": "DeepGrow 2D: clicks on one slice (any axis) segment the object on that slice (any structure, CT or MR)",
    "dextr3d": "DEXTR3D: six or more extreme points segment one object in 3D (any structure, CT or MR)",
    "segmentation": "Demo auto-segmentation of liver, spleen, kidneys and stomach in abdominal CT",
}


def monai_torch_numpy_versions() -> dict[str, str]:
    """The model-zoo version fields for the running environment."""
    import monai
    import numpy
    import torch

    return {"monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": numpy.__version__}


def _channel_def(names):
    return {str(i): n for i, n in enumerate(names)}


def segmentation_inference(network: dict[str, Any], labels: dict[int, str], spacing, roi, window) -> dict[str, Any]:
    """A model-zoo style inference.json (the layout of ``spleen_ct_segmentation``)."""
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.uint8",
        "output_postfix": "seg",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": list(spacing), "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": window[0], "a_max": window[1],
             "b_min": 0, "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "@image_key"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 1, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
             "output_dtype": "@output_dtype", "output_postfix": "@output_postfix", "separate_folder": False},
        ]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def create_bundle(path: str | Path, kind: str, *, network: dict[str, Any] | None = None,
                  settings: dict[str, Any] | None = None, version: str = "0.1.0",
                  extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write the configs of a bundle of ``kind`` into ``path`` (weights are not touched).

    ``network`` and ``settings`` override the defaults (tiny test bundles use a tiny network).
    """
    path = Path(path)
    if kind not in (*SETTINGS, "segmentation"):
        raise ConfigError(f"unknown model kind {kind!r}")
    net = copy.deepcopy(network or NETWORKS[kind])
    versions = monai_torch_numpy_versions()
    from claraseg import __version__ as claraseg_version
    meta: dict[str, Any] = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": version,
        "changelog": {version: "default weights trained by claraseg pretrain"},
        **versions,
        "optional_packages_version": {"claraseg": claraseg_version},
        "name": kind,
        "task": DESCRIPTIONS[kind],
        "description": DESCRIPTIONS[kind],
        "authors": "claraseg",
        "copyright": "Apache-2.0",
        "data_source": "see configs/training_history.json (written by claraseg pretrain)",
        "data_type": "nifti",
        "intended_use": "Research and annotation assistance; not for diagnostic use",
    }
    if kind == "segmentation":
        labels = (settings or {}).get("labels") or SEGMENTATION_LABELS
        labels = {int(k): v for k, v in labels.items()}
        roi = (settings or {}).get("roi_size") or SEGMENTATION_ROI
        spacing = (settings or {}).get("spacing") or SEGMENTATION_SPACING
        net["out_channels"] = len(labels) + 1
        inference = segmentation_inference(net, labels, spacing, roi, SEGMENTATION_WINDOW)
        names = ["background", *[labels[k] for k in sorted(labels)]]
        meta.update({
            "image_classes": "single channel data, CT intensity windowed to [0, 1]",
            "label_classes": ", ".join(f"{k} is {v}" for k, v in sorted(labels.items())) + ", 0 is everything else",
            "pred_classes": f"{len(names)} channels OneHot data, " + ", ".join(f"channel {i} is {n}" for i, n in enumerate(names)),
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                     "spatial_shape": list(roi), "dtype": "float32", "value_range": [0, 1],
                                     "is_patch_data": True, "channel_def": {"0": "image"}}},
                "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(names),
                                     "spatial_shape": list(roi), "dtype": "float32", "value_range": [0, 1],
                                     "is_patch_data": True, "channel_def": _channel_def(names)}},
            },
            "claraseg": {"kind": "segmentation", "labels": {str(k): v for k, v in labels.items()},
                         "spacing": list(spacing), "roi_size": list(roi), "demo_grade": True,
                         **{k: v for k, v in (settings or {}).items() if k not in ("labels", "spacing", "roi_size")}},
        })
    else:
        s = copy.deepcopy(SETTINGS[kind])
        s.update(copy.deepcopy(settings or {}))
        net["in_channels"] = len(s["channels"])
        inference = interactive_inference(kind, net)
        roi = s["roi_size"] if kind != "deepgrow2d" else s["roi_size"][:2]
        meta.update({
            "image_classes": "channels: " + ", ".join(s["channels"]),
            "label_classes": "single channel, 1 is the object, 0 is everything else (class-agnostic)",
            "pred_classes": "1 channel, logit of the object",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "CT or MR",
                                     "num_channels": len(s["channels"]), "spatial_shape": list(roi),
                                     "dtype": "float32", "value_range": [0, 1.5], "is_patch_data": True,
                                     "channel_def": _channel_def(s["channels"])}},
                "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 1,
                                     "spatial_shape": list(roi), "dtype": "float32", "value_range": [0, 1],
                                     "is_patch_data": True, "channel_def": {"0": "object"}}},
            },
            "claraseg": s,
        })
    meta.update(extra_metadata or {})
    train = {"claraseg_recipe": "claraseg pretrain --models " + kind, "kind": kind,
             **copy.deepcopy(TRAINING[kind])}
    write_json_atomic(path / INFERENCE, inference)
    write_json_atomic(path / TRAIN, train)
    write_json_atomic(path / METADATA, meta)
    (path / "models").mkdir(parents=True, exist_ok=True)
    return path
