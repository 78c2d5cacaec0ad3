"""Boundary refinement at the image's own resolution.

A network sees an object on its ROI grid; for an elongated object (a lateral ventricle, a psoas muscle)
that grid is up to twice as coarse as the image along the long axis, and the pasted-back mask's boundary
is uncertain by about one ROI voxel there. :func:`refine_boundary` re-decides the voxels in that band
from the image itself: a voxel keeps the network's answer unless its intensity is much more typical of
the other side. The likelihoods are histograms of a shell just inside the boundary and of a ring as far
outside it (so they adapt to any modality and contrast); the prior is the signed distance to the mask's boundary
measured in ROI voxels. Where the network worked on a grid as fine as the image only the voxels next to
the boundary can change, and then only on strong evidence; on a grid more than 1.5x finer, none.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage

from claraseg.engine.masks import BoxMask

#: Fewest core or ring voxels whose intensities are worth a histogram.
MIN_SAMPLES = 20
#: Most voxels a histogram reads (an evenly strided subset of a large organ's core or ring).
MAX_SAMPLES = 200_000


def refine_boundary(voxels: np.ndarray, spacing, mask: BoxMask, roi_spacing, fg=(), bg=(), *,
                    band: float = 1.0, tau: float = 0.7, ring: float = 4.0, bins: int = 48) -> BoxMask:
    """``mask`` with the voxels near its boundary re-decided from the intensities of ``voxels``.

    ``voxels`` is the image ``[k, j, i]``; ``spacing`` and ``roi_spacing`` (the grid the mask was made
    on) are mm ``[i, j, k]``. Distances are measured in ROI voxels: the core lies between ``band`` and
    ``band + ring`` inside, the background ring as far outside, and the voxels whose
    centres are within ``band + 0.5`` of the boundary take the sign of ``log p(I|core) - log p(I|ring) +
    signed distance / tau``. Components of the result that do not overlap the old mask are dropped, and
    the clicks ``fg``/``bg`` ((N, 3) ``[i, j, k]``) keep their answers. Returns ``mask`` itself when
    nothing can be decided (an empty or tiny mask, too few samples, a grid 1.5x finer than the image's).

    Where the ROI grid is 3x as coarse as the image or more (a large organ in a fine CT) the distances
    are measured on blocks of ``round(roi / (2 x image))`` voxels per axis (0.33-0.67 ROI voxels);
    every voxel is still decided from its own intensity. That keeps a click on a liver in a 512 x 512
    CT within its latency budget."""
    if mask.is_empty:
        return mask
    src = np.asarray(spacing, np.float64)
    scale = src / np.maximum(np.asarray(roi_spacing, np.float64), 1e-6)  # ROI voxels per image voxel, [i, j, k]
    if float(scale.min()) > band + 0.5:
        return mask  # no voxel centre lies within the band
    size = np.asarray(mask.size, np.int64)
    fg = np.asarray(fg, np.int64).reshape(-1, 3)
    bg = np.asarray(bg, np.int64).reshape(-1, 3)
    factor = np.maximum(1, np.rint(0.5 / scale)).astype(np.int64)  # [i, j, k]; blocks of 0.33-0.67 ROI voxels
    pad = np.ceil((band + ring + 1.0) / scale).astype(np.int64)
    lo = np.maximum(np.asarray(mask.start) - pad, 0)
    hi = np.minimum(np.asarray(mask.stop) + pad, size)
    if len(fg):
        lo, hi = np.minimum(lo, fg.min(axis=0)), np.maximum(hi, fg.max(axis=0) + 1)
    inside = mask.region(lo, hi) > 0
    image = np.asarray(voxels[tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))])
    new = _decide(image, inside, scale[::-1], tuple(int(v) for v in factor[::-1]), band, tau, ring, bins)
    if new is None:
        return mask
    for points, value in ((fg, True), (bg, False)):
        c = points - lo
        c = c[np.all((c >= 0) & (c < hi - lo), axis=1)]
        new[c[:, 2], c[:, 1], c[:, 0]] = value
    if not new.any():
        return mask
    return BoxMask(mask.size, lo, new.astype(np.uint8))


def _block_counts(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """The number of non-zero voxels of the 0/1 array ``a`` in each block of ``f`` voxels, the last, partial
    blocks padded with edge values (so a block's count over its ``prod(f)`` entries gives the mean the padded
    array has there): integer sums along one axis at a time."""
    out = a.view(np.uint8) if a.dtype == np.bool_ else a
    for axis, k in enumerate(f):
        if k == 1:
            continue
        n = out.shape[axis]
        starts = np.arange(0, n, k)
        acc = None
        for t in range(k):
            part = np.take(out, np.minimum(starts + t, n - 1), axis=axis).astype(np.int32, copy=False)
            acc = part.copy() if acc is None else np.add(acc, part, out=acc)
        out = acc
    return out.astype(np.int32, copy=False)


def _unblock(a: np.ndarray, f: tuple[int, int, int], shape) -> np.ndarray:
    """Each value of ``a`` repeated over its block of ``f`` voxels, cut to ``shape`` (a view of a new array)."""
    k, j, i = a.shape
    out = np.empty((k * f[0], j * f[1], i * f[2]), a.dtype)
    out.reshape(k, f[0], j, f[1], i, f[2])[...] = a[:, None, :, None, :, None]
    return out[: shape[0], : shape[1], : shape[2]]


#: scipy's private feature-transform entry point, or None once it is missing or refused a call (a scipy
#: whose internals changed): the public wrapper is used from then on.
_private_feature = getattr(getattr(ndimage, "_nd_image", None), "euclidean_feature_transform", None)


def _feature_transform(a: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    """The nearest zero voxel's indices ``(3, ...)`` int32 of a boolean 3D array: scipy's feature transform
    called on the array's bytes (scipy's wrapper first makes an int64 0/1 copy of the whole array and then
    an int8 one), or through the wrapper where that entry point is missing or refuses the call."""
    global _private_feature
    if a.dtype == np.bool_ and _private_feature is not None:
        ft = np.zeros((3,) + a.shape, dtype=np.int32)
        try:
            _private_feature(np.ascontiguousarray(a).view(np.int8), np.ascontiguousarray(sampling, np.float64), ft)
            return ft
        except (TypeError, ValueError, RuntimeError):
            _private_feature = None
    return ndimage.distance_transform_edt(a, sampling=sampling, return_distances=False, return_indices=True)


def edt(a: np.ndarray, sampling) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt(a, sampling=sampling)`` of a 3D array, the same values: scipy's
    feature transform, then its arithmetic (float64 offsets times the sampling, squared, summed over the
    axes in order, square root) one axis at a time instead of on ``(3, ...)`` temporaries."""
    sampling = np.broadcast_to(np.asarray(sampling, np.float64), (3,))
    ft = _feature_transform(a, sampling)
    acc = None
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = a.shape[axis]
        d = (ft[axis] - np.arange(a.shape[axis], dtype=ft.dtype).reshape(shape)).astype(np.float64)
        d *= sampling[axis]
        np.multiply(d, d, d)
        if acc is None:
            acc = d
        else:
            acc += d
    return np.sqrt(acc, out=acc)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helper(parallel: bool | None = None) -> ThreadPoolExecutor | None:
    """One worker thread for the second of two independent transforms (scipy's feature transform and numpy's
    large operations release the GIL), or None: ``parallel`` None asks for it when the engine runs on more
    than one thread (``torch.get_num_threads``)."""
    global _pool
    if not (torch.get_num_threads() > 1 if parallel is None else parallel):
        return None
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claraseg-boundary")
        return _pool


def _edt_pair(inside: np.ndarray, sampling, parallel: bool | None = None) -> np.ndarray:
    """Signed Euclidean distance (> 0 inside) of each voxel to the nearest voxel of the other side. The
    inside distances are computed on the object's box plus one voxel only (its border is all outside,
    so that is exact and spares the padding around the object). The two transforms are independent: with
    more than one engine thread (``parallel`` None) the inside one runs on a helper thread meanwhile."""
    box = []
    for axis in range(3):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    box = tuple(box)
    part = inside[box]
    pool = _helper(parallel)
    pending = pool.submit(edt, part, sampling) if pool is not None else None
    signed = edt(~inside, sampling)
    np.negative(signed, out=signed)
    inner = pending.result() if pending is not None else edt(part, sampling)
    signed[box] = np.where(part, inner, signed[box])
    return signed


def _signed_distance(inside: np.ndarray, scale, f: tuple[int, int, int]) -> np.ndarray:
    """Signed distance (ROI voxels; > 0 inside) of every voxel to the other side of ``inside``'s boundary,
    ``scale`` ROI voxels per voxel ``[k, j, i]``. With blocks ``f`` larger than one voxel it is computed on
    the blocks (majority inside) and spread back, each voxel at least one voxel from the other side."""
    if f == (1, 1, 1):
        return _edt_pair(inside, tuple(scale))
    # A block is inside where at least half its (edge-padded) voxels are, or, when no block is, where any is.
    counts = _block_counts(inside, f)
    coarse = 2 * counts >= int(np.prod(f))
    if not coarse.any():
        coarse = counts > 0
    signed = _unblock(_edt_pair(coarse, tuple(np.asarray(scale) * np.asarray(f))), f, inside.shape)
    step = float(np.min(scale))
    np.maximum(signed, step, out=signed, where=inside)
    np.minimum(signed, -step, out=signed, where=~inside)
    return signed


def _decide(image: np.ndarray, inside: np.ndarray, scale, f: tuple[int, int, int], band: float, tau: float,
            ring: float, bins: int) -> np.ndarray | None:
    """The re-decided mask (``scale``: ROI voxels per voxel, ``[k, j, i]``; ``f``: the blocks distances
    are measured on), or None when the intensities cannot be modelled."""
    signed = _signed_distance(inside, scale, f)
    # The core is the shell as deep inside as the ring is outside: the two samples are equally near the
    # boundary, so neither takes in more of a blurred edge than the other.
    core = (signed > band) & (signed <= band + ring)
    if np.count_nonzero(core) < MIN_SAMPLES * 2.5:
        core = (signed > 1.0) & (signed <= band + ring)
    background = (signed < -band) & (signed >= -(band + ring))
    if np.count_nonzero(core) < MIN_SAMPLES or np.count_nonzero(background) < MIN_SAMPLES:
        return None
    samples = image[core | background].astype(np.float32)
    low, high = np.percentile(samples[:: max(1, len(samples) // MAX_SAMPLES)], [0.5, 99.5])
    if not high > low:
        return None

    def bin_of(values: np.ndarray) -> np.ndarray:
        return np.clip(((values - low) * (bins / (high - low))).astype(np.int64), 0, bins - 1)

    def density(values: np.ndarray) -> np.ndarray:
        values = values[:: max(1, len(values) // MAX_SAMPLES)]
        h = np.bincount(bin_of(values), minlength=bins).astype(np.float64) + 1.0
        h = ndimage.gaussian_filter1d(h, 1.0)
        return h / h.sum()

    log_ratio = np.log(density(image[core].astype(np.float32))) - np.log(density(image[background].astype(np.float32)))
    band_voxels = (signed <= band + 0.5) & (signed >= -(band + 0.5))  # |signed| <= band + 0.5
    idx = bin_of(image[band_voxels].astype(np.float32))
    new = inside.copy()
    new[band_voxels] = log_ratio[idx] + signed[band_voxels] / tau > 0
    if not np.any(new > inside):
        return new  # nothing added outside the old mask: every component overlaps it
    labels, n = ndimage.label(new, structure=np.ones((3, 3, 3), bool))
    if n > 1:
        keep = np.unique(labels[new & inside])
        new = np.isin(labels, keep[keep > 0])
    return new
