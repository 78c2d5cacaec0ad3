"""Running MONAI model-zoo segmentation bundles on in-memory images.

The bundle's own ``preprocessing``, ``inferer`` and ``postprocessing`` (configs/inference.json) are
used as written, except the file loading and saving transforms: the image is handed over as a MONAI
``MetaTensor`` with the RAS affine ``LoadImaged`` would have produced, and the prediction (inverted
onto the input grid by the bundle's ``Invertd``) is returned as a label array.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from claraseg.errors import ConfigError
from claraseg.io import Image

#: Transforms of a zoo pipeline that read or write files; they are skipped for in-memory images.
FILE_TRANSFORMS = ("LoadImage", "LoadImaged", "SaveImage", "SaveImaged")


def to_metatensor(array_kji: np.ndarray, image: Image, dtype=np.float32):
    """A channel-less MetaTensor ``[i, j, k]`` with the image's IJK->RAS affine (as MONAI's readers give)."""
    import torch
    from monai.data import MetaTensor

    data = torch.from_numpy(np.ascontiguousarray(np.transpose(array_kji, (2, 1, 0)).astype(dtype, copy=False)))
    affine = torch.as_tensor(image.ijk_to_ras, dtype=torch.float64)
    meta = {"original_channel_dim": float("nan"), "space": "RAS", "filename_or_obj": "session_image",
            "spatial_shape": np.asarray(data.shape), "original_affine": affine.clone()}
    return MetaTensor(data, affine=affine, meta=meta)


def _strip_file_transforms(config: dict[str, Any], key: str) -> dict[str, Any] | None:
    entry = config.get(key)
    if not isinstance(entry, dict):
        return None
    entry = copy.deepcopy(entry)
    transforms = entry.get("transforms")
    if isinstance(transforms, list):
        entry["transforms"] = [t for t in transforms
                               if not (isinstance(t, dict) and str(t.get("_target_", "")).split(".")[-1] in FILE_TRANSFORMS)]
    return entry


class ZooPipeline:
    """The parsed preprocessing, inferer and postprocessing of a zoo bundle's inference.json."""

    def __init__(self, inference: dict[str, Any], image_key: str | None = None):
        from monai.bundle import ConfigParser

        cfg = copy.deepcopy(inference)
        for key in ("preprocessing", "postprocessing"):
            stripped = _strip_file_transforms(cfg, key)
            if stripped is not None:
                cfg[key] = stripped
        missing = [k for k in ("preprocessing", "inferer") if k not in cfg]
        if missing:
            raise ConfigError(f"inference.json lacks {missing}; a segmentation bundle needs preprocessing and inferer")
        parser = ConfigParser(cfg)
        try:
            self.image_key = image_key or parser.get_parsed_content("image_key", default="image")
            self.preprocessing = parser.get_parsed_content("preprocessing")
            self.inferer = parser.get_parsed_content("inferer")
            self.postprocessing = parser.get_parsed_content("postprocessing") if "postprocessing" in cfg else None
        except Exception as e:  # MONAI raises many types for broken references
            raise ConfigError(f"cannot parse the bundle's inference.json ({type(e).__name__}: {e})") from None

    def preprocess(self, image: Image) -> dict[str, Any]:
        """Run the bundle's preprocessing on an image; returns the data dict (``[C, ...]`` tensors)."""
        return self.preprocessing({self.image_key: to_metatensor(image.array, image)})

    def run(self, network, image: Image, device: str = "cpu", amp: bool = False) -> np.ndarray:
        """Segment ``image``: a label array ``[k, j, i]`` (uint8) on the image's grid."""
        import torch

        data = self.preprocess(image)
        x = data[self.image_key][None].to(device)
        with torch.no_grad(), torch.autocast("cuda", enabled=amp and device.startswith("cuda")):
            pred = self.inferer(x, network)
        data["pred"] = pred[0].float().cpu()
        if hasattr(data["pred"], "copy_meta_from"):
            data["pred"].copy_meta_from(data[self.image_key], copy_attr=False)
        if self.postprocessing is not None:
            data = self.postprocessing(data)
        out = data["pred"]
        out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        if out.ndim == 4:
            out = out.argmax(axis=0) if out.shape[0] > 1 else out[0]
        lab = np.rint(np.transpose(out, (2, 1, 0))).astype(np.uint8)
        if lab.shape != image.array.shape:
            raise ConfigError(
                f"the bundle's postprocessing returned shape {lab.shape[::-1]} (i, j, k), not the image's "
                f"{image.size_ijk}; it needs an Invertd step back onto the input grid"
            )
        return lab
