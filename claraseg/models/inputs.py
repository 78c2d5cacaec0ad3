"""The network inputs of the interactive models, built the same way by the engine and by training.

Positions are ROI voxel indices ``[i, j, k]``; channels are ``[C, k, j, i]`` float32 tensors: the
normalised image, Gaussian click heat maps (:func:`claraseg.guidance.gaussian_heatmap`) and the current
mask. The bundle's ``claraseg`` settings give the sigma and margins.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from claraseg.guidance import gaussian_heatmap, sigma_in_voxels
from claraseg.models.bundle import DEXTR_CHANNELS

#: A callable that maps a network input ``[C, ...]`` to foreground probabilities of the same spatial shape.
Predictor = Callable[[torch.Tensor], np.ndarray]


def interactive_input(image_roi: torch.Tensor, fg_roi, bg_roi, mask_roi, sigma_vox) -> torch.Tensor:
    """DeepGrow input ``[4, k, j, i]``: image, foreground heat map, background heat map, current mask.

    ``fg_roi``/``bg_roi`` are (N, 3) ROI positions ``[i, j, k]``; ``mask_roi`` is 0/1 on the ROI grid.
    """
    shape = tuple(image_roi.shape)
    fg = gaussian_heatmap(np.asarray(fg_roi, dtype=np.float64).reshape(-1, 3), shape, sigma_vox)
    bg = gaussian_heatmap(np.asarray(bg_roi, dtype=np.float64).reshape(-1, 3), shape, sigma_vox)
    mask = torch.as_tensor(np.asarray(mask_roi, dtype=np.float32))
    return torch.stack([image_roi.float(), torch.from_numpy(fg), torch.from_numpy(bg), mask])


#: The channels of a DEXTR3D model that also takes correction clicks and the current mask.
DEXTR_CLICK_CHANNELS = DEXTR_CHANNELS[1]


def dextr_takes_clicks(settings: dict) -> bool:
    """Whether a DEXTR3D bundle's network also reads correction clicks and the current mask
    (``channels`` = :data:`DEXTR_CLICK_CHANNELS`), or only the image and the extreme points."""
    return list(settings.get("channels", [])) == DEXTR_CLICK_CHANNELS


def dextr_input(image_roi: torch.Tensor, points_roi, sigma_vox, clicks: bool = False, fg_roi=(), bg_roi=(),
                mask_roi=None) -> torch.Tensor:
    """DEXTR3D input: image and the extreme points' heat map ``[2, k, j, i]``; with ``clicks`` also the
    foreground and background click heat maps and the current mask ``[5, k, j, i]`` (all zero for a
    first segmentation from the points). Positions are (N, 3) ROI ``[i, j, k]``."""
    shape = tuple(image_roi.shape)

    def heat(points):
        return torch.from_numpy(gaussian_heatmap(np.asarray(points, dtype=np.float64).reshape(-1, 3), shape, sigma_vox))

    chans = [image_roi.float(), heat(points_roi)]
    if clicks:
        mask = torch.zeros(shape) if mask_roi is None else torch.as_tensor(np.asarray(mask_roi, dtype=np.float32))
        chans += [heat(fg_roi), heat(bg_roi), mask.float()]
    return torch.stack(chans)


def dextr_margin(settings: dict, extent_mm) -> np.ndarray:
    """The margin (mm, per axis) a DEXTR3D box gets on each side: ``margin_mm``, plus ``margin_rel`` x the
    points' extent along that axis when the bundle sets it (room for an object the points under-span)."""
    extent = np.asarray(extent_mm, dtype=np.float64)
    return float(settings["margin_mm"]) + float(settings.get("margin_rel", 0.0)) * extent


def deepgrow_sigma(settings: dict, roi_spacing) -> np.ndarray:
    """Click heat-map sigma in ROI voxels for a DeepGrow model (sigma in mm, floored in voxels)."""
    g = settings["guidance"]
    return sigma_in_voxels(g["sigma_mm"], roi_spacing, g.get("min_sigma_vox", 0.0))


def network_input(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Add the batch axis and, for 2D models, drop the ROI's k axis of size 1: ``[C, 1, j, i]`` -> ``[1, C, j, i]``."""
    return (x[:, 0] if kind == "deepgrow2d" else x)[None]
