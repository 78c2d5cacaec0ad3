"""The region of interest (ROI) a model sees, and torch resampling to and from it.

A :class:`Roi` lives in the source volume's *scaled index frame*: ``x = [i, j, k] * spacing`` (mm along the
voxel axes, voxel 0 at the origin). The image's direction and origin do not matter to the networks, which
are trained with flips and rotations, so they never enter here. Inference uses axis-aligned ROIs; training
draws rotated ones, through the same sampling code, so both see identically prepared inputs.

ROI arrays are ``[k, j, i]`` like every other array (``size`` is ``[i, j, k]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Roi:
    """A box of ``size`` voxels of ``spacing`` mm centred at ``center`` (mm, scaled index frame), whose
    i, j, k axes are the columns of ``axes`` (a rotation or permutation)."""

    center: np.ndarray
    spacing: np.ndarray
    size: tuple[int, int, int]
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))

    def affine(self, src_spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """``(A, b)`` with source index ``q = A @ u + b`` for ROI voxel position ``u`` (both ``[i, j, k]``)."""
        half = (np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0
        sp = np.asarray(src_spacing, dtype=np.float64)
        a = (self.axes * self.spacing[None, :]) / sp[:, None]
        return a, self.center / sp - a @ half

    def roi_to_index(self, u_ijk: np.ndarray, src_spacing: Sequence[float]) -> np.ndarray:
        """ROI voxel positions (N, 3) ``[i, j, k]`` -> continuous source indices (N, 3)."""
        a, b = self.affine(src_spacing)
        return np.asarray(u_ijk, dtype=np.float64) @ a.T + b

    def index_to_roi(self, q_ijk: np.ndarray, src_spacing: Sequence[float]) -> np.ndarray:
        """Continuous source indices (N, 3) -> ROI voxel positions (N, 3)."""
        a, b = self.affine(src_spacing)
        return (np.asarray(q_ijk, dtype=np.float64) - b) @ np.linalg.inv(a).T

    def corners_index(self, src_spacing: Sequence[float]) -> np.ndarray:
        """Source indices of the 8 outermost ROI voxel centres."""
        n = np.asarray(self.size, dtype=np.float64) - 1.0
        c = np.array([[a, b, d] for a in (0, n[0]) for b in (0, n[1]) for d in (0, n[2])])
        return self.roi_to_index(c, src_spacing)

    def covered_box(self, src_spacing: Sequence[float], src_size_ijk: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Source voxel box ``[start, stop)`` whose voxel centres lie inside the ROI's sampled extent."""
        q = self.corners_index(src_spacing)
        size = np.asarray(src_size_ijk, dtype=np.int64)
        start = np.clip(np.ceil(q.min(axis=0) - 1e-6), 0, size).astype(np.int64)
        stop = np.clip(np.floor(q.max(axis=0) + 1e-6) + 1, 0, size).astype(np.int64)
        return start, np.maximum(stop, start)


def object_spacing(extent_mm: float, roi_voxels: int, fill: float, spacing_range: Sequence[float]) -> float:
    """Isotropic ROI spacing at which an object of ``extent_mm`` fills ``fill`` of ``roi_voxels``,
    clamped to ``spacing_range`` (mm)."""
    s = float(extent_mm) / max(1e-6, float(fill) * float(roi_voxels))
    return float(np.clip(s, spacing_range[0], spacing_range[1]))


def square_roi(center_ijk, src_spacing, spacing_mm: float | Sequence[float], size_ijk: Sequence[int],
               axes: np.ndarray | None = None) -> Roi:
    """An ROI of ``size_ijk`` voxels of ``spacing_mm`` centred on the source index ``center_ijk``."""
    centre = np.asarray(center_ijk, dtype=np.float64) * np.asarray(src_spacing, dtype=np.float64)
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    return Roi(centre, spacing, tuple(int(v) for v in size_ijk), np.eye(3) if axes is None else np.asarray(axes, float))


def box_roi(lo_ijk, hi_ijk, src_spacing, margin_mm, size_ijk: Sequence[int]) -> Roi:
    """An axis-aligned ROI covering the source voxel box ``[lo, hi]`` (inclusive voxel centres) plus
    ``margin_mm`` (one number, or one per axis ``[i, j, k]``) on every side, resampled to ``size_ijk`` voxels (spacing differs per axis)."""
    sp = np.asarray(src_spacing, dtype=np.float64)
    lo = np.asarray(lo_ijk, dtype=np.float64) * sp - margin_mm
    hi = np.asarray(hi_ijk, dtype=np.float64) * sp + margin_mm
    size = np.asarray(size_ijk, dtype=np.float64)
    spacing = np.maximum(hi - lo, 1e-3) / np.maximum(size - 1.0, 1.0)
    return Roi((lo + hi) / 2.0, spacing, tuple(int(v) for v in size_ijk))


def _affine_grid(a: np.ndarray, b: np.ndarray, out_size_ijk: Sequence[int], in_shape_kji: Sequence[int]) -> torch.Tensor:
    """grid_sample coordinates (``align_corners=False``; x = i, y = j, z = k), shape ``[1, k, j, i, 3]``,
    of the positions ``q = a @ u + b`` for every output voxel ``u``; built by broadcasting (it is affine)."""
    n = np.asarray(in_shape_kji[::-1], dtype=np.float64)
    an = 2.0 * a / n[:, None]
    bn = (2.0 * b + 1.0) / n - 1.0
    ni, nj, nk = (int(v) for v in out_size_ijk)
    col = [torch.from_numpy(an[:, c].astype(np.float32)) for c in range(3)]
    grid = (torch.from_numpy(bn.astype(np.float32)).view(1, 1, 1, 3)
            + torch.arange(ni, dtype=torch.float32).view(1, 1, ni, 1) * col[0]
            + torch.arange(nj, dtype=torch.float32).view(1, nj, 1, 1) * col[1]
            + torch.arange(nk, dtype=torch.float32).view(nk, 1, 1, 1) * col[2])
    return grid[None]


def sample_roi(volume, src_spacing: Sequence[float], roi: Roi, mode: str = "bilinear",
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Resample a source volume ``[K, J, I]`` into the ROI.

    ``volume`` is a numpy array, a torch tensor or anything with ``shape`` and numpy-style box slicing.
    Returns float32 ``[k, j, i]`` of the ROI's size; outside the volume the value is 0. ``mode`` is
    ``bilinear`` (trilinear) for images and ``nearest`` for masks. Only the source box the ROI touches
    is converted to float; ``transform`` (e.g. intensity normalisation) is applied to that box before
    interpolating, exactly as when a whole volume is normalised first. The box ``transform`` receives is
    a float32 copy of its own, which it may change in place.
    """
    a, b = roi.affine(src_spacing)
    q = roi.corners_index(src_spacing)
    shape = np.asarray(volume.shape[::-1], dtype=np.int64)
    lo = np.clip(np.floor(q.min(axis=0)).astype(np.int64) - 1, 0, shape)
    hi = np.clip(np.ceil(q.max(axis=0)).astype(np.int64) + 2, 0, shape)
    out_shape = tuple(roi.size[::-1])
    if np.any(hi <= lo):
        return torch.zeros(out_shape, dtype=torch.float32)
    if mode == "nearest" and transform is None and not isinstance(volume, torch.Tensor) \
            and not np.count_nonzero(a - np.diag(np.diag(a))):
        return _nearest_axis_aligned(volume, a, b, lo, hi, roi.size)
    sub = volume[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    if isinstance(sub, np.ndarray):  # a view of the box, converted to float32 by the one copy below
        sub = torch.from_numpy(sub if sub.flags.writeable else np.ascontiguousarray(sub))
    sub = torch.as_tensor(sub).to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if transform is not None:
        sub = transform(sub)
    grid = _affine_grid(a, b - lo, roi.size, sub.shape).to(sub.device)
    res = F.grid_sample(sub[None, None], grid, mode=mode, padding_mode="zeros", align_corners=False)
    return res[0, 0].cpu()


def _nearest_axis_aligned(volume, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                          size_ijk: Sequence[int]) -> torch.Tensor:
    """What :func:`sample_roi` computes in ``nearest`` mode for an ROI whose axes are the volume's (``a``
    diagonal), without converting the source box to float or building the whole grid: along such an ROI
    each output axis reads one source axis, so ``grid_sample`` picks, per axis, the same source index for
    every output voxel of a plane. Those indices are ``grid_sample``'s own: the grid's coordinates along
    the axis (from :func:`_affine_grid` on the same box) are sampled from a ramp of the box's length. The
    output is then the voxels at those indices (0 where an index falls outside the box)."""
    box = hi - lo
    index = []
    for axis in range(3):
        size = [1, 1, 1]
        size[axis] = int(size_ijk[axis])
        coord = _affine_grid(a, b - lo, size, tuple(box[::-1]))[..., axis].reshape(1, 1, 1, -1)
        grid = torch.zeros((1, 1, 1, coord.shape[-1], 3), dtype=torch.float32)
        grid[..., 0] = coord
        ramp = torch.arange(1, int(box[axis]) + 1, dtype=torch.float32).view(1, 1, 1, 1, -1)
        picked = F.grid_sample(ramp, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        index.append(picked.reshape(-1).numpy().astype(np.int64) - 1)  # -1: outside the box
    out = torch.zeros(tuple(int(v) for v in size_ijk[::-1]), dtype=torch.float32)
    inside = [i >= 0 for i in index]
    if not all(v.any() for v in inside):
        return out
    first = np.array([int(i[v].min()) for i, v in zip(index, inside)])
    last = np.array([int(i[v].max()) for i, v in zip(index, inside)])
    start, stop = lo + first, lo + last + 1
    values = np.asarray(volume[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]])
    picked = torch.from_numpy(np.ascontiguousarray(values))
    for axis in range(3):
        dim = 2 - axis
        rows = np.flatnonzero(inside[axis])
        picked = picked.index_select(dim, torch.from_numpy(index[axis][rows] - first[axis]))
    rows = [np.flatnonzero(v) for v in inside[::-1]]  # [k, j, i]
    if all(r[-1] - r[0] + 1 == len(r) for r in rows):  # one run per axis (an ROI's indices grow along it)
        out[tuple(slice(int(r[0]), int(r[-1]) + 1) for r in rows)] = picked
    else:
        planes = [torch.from_numpy(r) for r in rows]
        out[planes[0][:, None, None], planes[1][None, :, None], planes[2][None, None, :]] = picked.to(torch.float32)
    return out


def sample_from_roi(values: torch.Tensor, roi: Roi, src_spacing: Sequence[float], start_ijk, stop_ijk) -> torch.Tensor:
    """Resample ROI values ``[k, j, i]`` (e.g. probabilities) back onto the source voxels of the box
    ``[start, stop)``; trilinear, border values beyond the ROI's edge voxels. Returns ``[k, j, i]`` of the box."""
    start = np.asarray(start_ijk, dtype=np.int64)
    size = np.asarray(stop_ijk, dtype=np.int64) - start
    a, b = roi.affine(src_spacing)
    inv = np.linalg.inv(a)
    # u = inv @ (q - b) with q = v + start for box voxel v
    if np.count_nonzero(inv - np.diag(np.diag(inv))) == 0:
        return _resample_axis_aligned(values.float(), np.diag(inv), inv @ (start - b), size)
    grid = _affine_grid(inv, inv @ (start - b), size, values.shape)
    res = F.grid_sample(values.float()[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return res[0, 0]


def _resample_axis_aligned(values: torch.Tensor, scale_ijk: np.ndarray, offset_ijk: np.ndarray,
                           size_ijk: np.ndarray) -> torch.Tensor:
    """Trilinear resampling of ``values`` ``[k, j, i]`` at ``u = scale * v + offset`` per axis for the
    output voxels ``v`` of ``size_ijk``, border values beyond the edge voxels: what ``grid_sample``
    computes for an axis-aligned ROI, as three 1D interpolations (the output of a paste-back is a source
    box of millions of voxels, the ROI 48-64 per axis: far cheaper axis by axis)."""
    out = values
    for axis_ijk in range(3):
        dim = 2 - axis_ijk
        n = values.shape[dim]
        u = np.clip(scale_ijk[axis_ijk] * np.arange(int(size_ijk[axis_ijk])) + offset_ijk[axis_ijk], 0.0, n - 1.0)
        lo = np.floor(u).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        shape = [1, 1, 1]
        shape[dim] = len(u)
        w = torch.from_numpy((u - lo).astype(np.float32)).view(shape).to(values.device)
        first = out.index_select(dim, torch.from_numpy(lo).to(values.device))
        # first + (second - first) * w, computed in place in second's buffer (the same values)
        out = out.index_select(dim, torch.from_numpy(hi).to(values.device)).sub_(first).mul_(w).add_(first)
    return out


def slice_axes(axis: int) -> np.ndarray:
    """Axes of a 2D ROI on slices normal to source axis ``axis`` (0 = i, 1 = j, 2 = k): the ROI's i and j
    run along the two other source axes (in increasing order), its k (size 1) along ``axis``."""
    others = [a for a in range(3) if a != axis]
    m = np.zeros((3, 3))
    m[others[0], 0] = 1.0
    m[others[1], 1] = 1.0
    m[axis, 2] = 1.0
    return m
