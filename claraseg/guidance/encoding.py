"""Point -> heat-map encodings. Computed on the ROI only and separably (one 1D Gaussian per axis and
point), so the cost is O(points x ROI voxels) numpy operations with no per-voxel Python loop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sigma_in_voxels(sigma_mm: float, spacing_ijk: Sequence[float], min_sigma_vox: float = 0.0) -> np.ndarray:
    """Gaussian sigma per axis ``[i, j, k]`` in voxels of a grid of ``spacing_ijk`` mm, at least ``min_sigma_vox``."""
    s = float(sigma_mm) / np.asarray(spacing_ijk, dtype=np.float64)
    return np.maximum(s, float(min_sigma_vox))


def gaussian_heatmap(points_ijk, shape_kji: Sequence[int], sigma_vox: Sequence[float] | float) -> np.ndarray:
    """Heat map ``[k, j, i]`` float32 in [0, 1]: the maximum over points of ``exp(-d^2 / 2 sigma^2)``.

    Args:
        points_ijk: (N, 3) continuous voxel positions ``[i, j, k]`` in the map's grid (may lie outside it;
            their tails still count). N = 0 gives an all-zero map.
        shape_kji: shape of the map.
        sigma_vox: sigma in voxels, one value or one per axis ``[i, j, k]`` (anisotropic grids: use
            :func:`sigma_in_voxels` so the blob is round in millimetres).
    """
    shape = tuple(int(v) for v in shape_kji)
    out = np.zeros(shape, dtype=np.float32)
    pts = np.asarray(points_ijk, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return out
    sig = np.broadcast_to(np.asarray(sigma_vox, dtype=np.float64), (3,))
    axes = [np.arange(n, dtype=np.float64) for n in shape[::-1]]  # i, j, k coordinates
    for p in pts:
        gi, gj, gk = (np.exp(-((ax - c) ** 2) / (2.0 * s * s)).astype(np.float32) for ax, c, s in zip(axes, p, sig))
        np.maximum(out, gk[:, None, None] * gj[None, :, None] * gi[None, None, :], out=out)
    return out
