"""Guidance: what turns clicks and extreme points into network input, and where the network looks.

- :mod:`~claraseg.guidance.encoding`: points -> Gaussian heat-map channels (sigma in mm, anisotropic grids).
- :mod:`~claraseg.guidance.clicks`: the click protocol of ANCHORS.md (next click = deepest point of the
  largest error component), random click variants for training, extreme points and their symmetric jitter.
- :mod:`~claraseg.guidance.roi`: the region of interest a model sees (a possibly rotated box resampled to
  the model's input size) and the torch sampling to and from it.
"""

from claraseg.guidance.clicks import (
    error_components,
    extreme_points,
    jitter_points,
    next_click,
    random_click,
)
from claraseg.guidance.encoding import gaussian_heatmap, sigma_in_voxels
from claraseg.guidance.roi import Roi, box_roi, object_spacing, sample_from_roi, sample_roi, square_roi

__all__ = [
    "Roi", "box_roi", "error_components", "extreme_points", "gaussian_heatmap", "jitter_points", "next_click",
    "object_spacing", "random_click", "sample_from_roi", "sample_roi", "sigma_in_voxels", "square_roi",
]
