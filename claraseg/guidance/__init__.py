"""Guidance: what turns clicks and extreme points into network input, and where the network looks.

- :mod:`~claraseg.guidance.encoding`: points -> Gaussian heat-map channels (sigma in mm, anisotropic grids).
- :mod:`~claraseg.guidance.clicks`: simulated training clicks (the ANCHORS.md protocol's deepest point of an
  error component, with random variants), extreme points and their symmetric jitter.
- :mod:`~claraseg.guidance.roi`: the region of interest a model sees (a possibly rotated box resampled to
  the model's input size) and the torch sampling to and from it (imported on first use: the rest of the
  package does not need torch).
"""

from claraseg.guidance.clicks import (
    error_components,
    extreme_points,
    jitter_points,
    random_click,
)
from claraseg.guidance.encoding import gaussian_heatmap, sigma_in_voxels

#: Names of :mod:`~claraseg.guidance.roi`, imported on first use (it needs torch; clicks and encodings do not).
_ROI_NAMES = ("Roi", "box_roi", "object_spacing", "sample_from_roi", "sample_roi", "square_roi")


def __getattr__(name: str):
    if name in _ROI_NAMES:
        from claraseg.guidance import roi

        return getattr(roi, name)
    raise AttributeError(f"module 'claraseg.guidance' has no attribute {name!r}")


__all__ = [
    "Roi", "box_roi", "error_components", "extreme_points", "gaussian_heatmap", "jitter_points",
    "object_spacing", "random_click", "sample_from_roi", "sample_roi", "sigma_in_voxels", "square_roi",
]
