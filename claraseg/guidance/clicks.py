"""Simulated training clicks and extreme points (the evaluation's click protocol is
:mod:`claraseg.evaluate.protocol`).

All masks are numpy ``[k, j, i]`` arrays; all points are voxel indices ``[i, j, k]``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: 26-connectivity, as the click protocol prescribes.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def error_components(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected components of ``pred != gt``; returns (labels, count)."""
    err = np.asarray(pred, dtype=bool) != np.asarray(gt, dtype=bool)
    structure = CONNECTIVITY_26 if err.ndim == 3 else np.ones((3,) * err.ndim, dtype=bool)
    return ndimage.label(err, structure=structure)


def _inner_distance(component: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxels) of each component voxel to the nearest outside voxel; the volume's
    border counts as outside. Axes of size 1 (a 2D slice stored as ``[1, j, i]``) are not padded."""
    pad = [(1, 1) if n > 1 else (0, 0) for n in component.shape]
    crop = tuple(slice(1, -1) if n > 1 else slice(None) for n in component.shape)
    return ndimage.distance_transform_edt(np.pad(component, pad))[crop]


def _deepest(component: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index ``[k, j, i]`` of the voxel of largest Euclidean distance to the component's outside
    (distance in voxel units; ties broken by ``rng``)."""
    dist = _inner_distance(component)
    best = np.flatnonzero(dist == dist.max())
    pick = best[0] if len(best) == 1 else best[int(rng.integers(len(best)))]
    return np.array(np.unravel_index(pick, component.shape))


def random_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator, *, p_deepest: float = 0.5):
    """A training click on the error ``pred != gt``, after the click protocol of ANCHORS.md (the deepest
    voxel of the largest error component) with random variants: the component is drawn with probability
    proportional to its size and the voxel either the deepest (``p_deepest``) or drawn with weight = distance^2, which
    imitates users who click near, not exactly at, the middle of the error. Returns ``(ijk, is_fg)`` or None."""
    labels, n = error_components(pred, gt)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:].astype(np.float64)
    comp = int(rng.choice(n, p=sizes / sizes.sum())) + 1
    box = ndimage.find_objects(labels)[comp - 1]
    sub = labels[box] == comp
    if rng.random() < p_deepest:
        kji = _deepest(sub, rng)
    else:
        dist = _inner_distance(sub).ravel() ** 2
        kji = np.array(np.unravel_index(int(rng.choice(dist.size, p=dist / dist.sum())), sub.shape))
    kji = kji + np.array([s.start for s in box])
    return kji[::-1].astype(np.int64), bool(np.asarray(gt)[tuple(kji)])


def extreme_points(mask: np.ndarray) -> np.ndarray:
    """The 6 extreme points ``[i, j, k]`` of a ``[k, j, i]`` mask: min and max along i, j, k (in that
    order); among tied voxels the one nearest the mask's centroid (ANCHORS.md). Empty mask -> (0, 3)."""
    # Only the voxels of the six outermost slices are candidates, so only they are listed; the centroid
    # comes from per-slice counts (integer sums, exact, divided once: the mean of all voxel positions).
    m = np.asarray(mask) != 0
    if m.ndim != 3:
        raise ValueError(f"extreme_points needs a 3D [k, j, i] mask, not shape {m.shape}")
    counts = [np.count_nonzero(m, axis=tuple(a for a in range(3) if a != d)) for d in (2, 1, 0)]  # per i, j, k
    total = int(counts[0].sum())
    if total == 0:
        return np.zeros((0, 3), dtype=np.int64)
    centroid = np.array([float(int(np.dot(np.arange(len(c), dtype=np.int64), c))) for c in counts]) / total
    out = []
    for axis in range(3):
        hit = np.flatnonzero(counts[axis])
        for value in (hit[0], hit[-1]):
            index = [slice(None)] * 3
            index[2 - axis] = value
            rest = np.argwhere(m[tuple(index)])  # the slice's voxels, in the full array's C order
            kji = np.insert(rest, 2 - axis, value, axis=1)
            ijk = kji[:, ::-1]
            d2 = ((ijk - centroid) ** 2).sum(axis=1)
            out.append(ijk[np.argmin(d2)])
    return np.asarray(out, dtype=np.int64)


def jitter_points(points_ijk, rng: np.random.Generator, max_vox: float, size_ijk=None) -> np.ndarray:
    """Symmetric jitter: each coordinate moves by an integer drawn uniformly from ``[-max_vox, max_vox]``
    (MONAI's ``get_extreme_points`` jitter is one-sided). Clipped into the volume when ``size_ijk`` is given."""
    p = np.asarray(points_ijk, dtype=np.int64).reshape(-1, 3)
    m = int(round(max_vox))
    q = p + rng.integers(-m, m + 1, size=p.shape)
    if size_ijk is not None:
        q = np.clip(q, 0, np.asarray(size_ijk, dtype=np.int64) - 1)
    return q
