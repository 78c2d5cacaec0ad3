"""The ``configs/inference.json`` of an interactive bundle: MONAI bundle syntax that runs the model on a
file with the transforms of :mod:`claraseg.models.transforms` (the engine's own stages). Run from the
bundle folder::

    python -m monai.bundle run --config_file configs/inference.json --image ct.nii.gz \\
        --foreground '[[60, 50, 50]]' [--background '[[40, 50, 50]]'] [--mask current.nii.gz] --output obj.nii.gz
    python -m monai.bundle run --config_file configs/inference.json --image ct.nii.gz \\
        --points '[[i, j, k], ... six extreme points]' --output obj.nii.gz              # DEXTR3D
    python -m monai.bundle run ... --foreground '[[60, 50, 50]]' --slice_axis 2     # DeepGrow 2D

Every constant is a reference to the bundle's ``claraseg`` metadata (``@_meta_#claraseg#...``), which
MONAI reads from ``configs/metadata.json``. The engine itself reads only ``network_def`` from this file
(:meth:`claraseg.models.bundle.Bundle.build_network`); nothing a client sends reaches this config.
"""

from __future__ import annotations

import copy
from typing import Any

T = "claraseg.models.transforms."


def _load_and_normalise(point_keys: list[str], min_points: Any) -> list[dict[str, Any]]:
    return [
        {"_target_": T + "LoadImaged", "keys": "image",
         "_desc_": "claraseg's reader: NIfTI, NRRD or a DICOM folder; voxels [k, j, i], LPS geometry"},
        {"_target_": T + "LoadMaskd", "keys": "mask", "reference_key": "image",
         "_desc_": "the object's current mask (a label file on the image's grid), empty without one"},
        {"_target_": T + "Clicksd", "keys": point_keys, "reference_key": "image", "min_points": min_points,
         "_desc_": "voxel indices [i, j, k] inside the image"},
        {"_target_": T + "IntensityVolumed", "keys": "image", "intensity": "@_meta_#claraseg#intensity",
         "_desc_": "the claraseg intensity spec: CT window or MR percentiles onto [0, 1], per modality, "
                   "applied to every resampled ROI"},
    ]


def interactive_inference(kind: str, network: dict[str, Any]) -> dict[str, Any]:
    """The inference config of an interactive bundle of ``kind`` with ``network`` as ``network_def``."""
    config: dict[str, Any] = {
        "imports": ["$import os", "$import torch", "$from claraseg.models.transforms import engine_network"],
        "bundle_root": ".",
        "models_dir": "$os.path.dirname(os.path.abspath(@bundle_root))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "image": "",
        "mask": "",
        "output": "$os.path.join(@bundle_root, 'eval', 'mask.nii.gz')",
        "network_def": copy.deepcopy(network),
        "network": "$engine_network(@bundle_root, @device)",
        "settings": "@_meta_#claraseg",
    }
    save = {"_target_": T + "SaveMaskd", "keys": "pred", "output": "@output",
            "_desc_": "the 0/1 mask on the image's grid, written atomically"}
    if kind == "dextr3d":
        config.update({"points": []})
        pre = _load_and_normalise(["points"], "@_meta_#claraseg#min_points")
        inferer = {"_target_": T + "Dextrd", "network": "@network", "settings": "@settings", "device": "@device",
                   "keys": "points",
                   "_desc_": "ROI: the points' box plus margin_mm onto roi_size; channels: image, extreme-point "
                             "heat map (guidance.sigma_vox), empty clicks and mask; network with tta_flips flips; "
                             "sigmoid; threshold; pasted onto the image grid"}
        post = [{"_target_": T + "BoundaryRefined", "settings": "@settings", "points_key": "points",
                 "_desc_": "boundary_refine: the boundary re-decided at the image's resolution"}, save]
        inputs = "{'image': @image, 'mask': @mask, 'points': @points}"
    else:
        config.update({"foreground": [], "background": []})
        if kind == "deepgrow2d":
            config["slice_axis"] = 2
        pre = _load_and_normalise(["foreground", "background"], 1)
        inferer = {"_target_": T + "DeepGrowd", "network": "@network", "settings": "@settings", "kind": kind,
                   "device": "@device",
                   "_desc_": "ROI around the clicks and the current mask (roi_size, first_click_spacing_mm, fill, "
                             "correction_fill; first_click_grow_passes wider when the result is cut); channels: "
                             "image, foreground and background heat maps (guidance.sigma_mm), current mask; "
                             "network with tta_flips flips; sigmoid; threshold; pasted onto the current mask"}
        if kind == "deepgrow2d":
            inferer["slice_axis"] = "@slice_axis"
            post = [save]
        else:
            post = [{"_target_": T + "ShapeRefitd", "settings": "@settings", "models_dir": "@models_dir",
                     "device": "@device",
                     "_desc_": "shape_refit_*: DEXTR3D (the bundle shape_refit_model names, beside this one) on "
                               "the result's extreme points, the clicks honoured"},
                    {"_target_": T + "BoundaryRefined", "settings": "@settings", "models_dir": "@models_dir",
                     "_desc_": "boundary_refine: the boundary re-decided at the image's resolution"},
                    save]
        inputs = "{'image': @image, 'mask': @mask, 'foreground': @foreground, 'background': @background}"
    config.update({
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "run": [f"$@postprocessing(@inferer(@preprocessing({inputs})))"],
    })
    return config
