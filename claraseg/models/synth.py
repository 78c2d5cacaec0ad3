"""Domain randomisation for the interactive models' training samples (SynthSeg-style), applied to an
ROI image and its label map after they are resampled from a training volume.

- :func:`synthesize_contrast`: new intensities from the label map (a random mean and spread per label
  value, the real image's texture kept in part, the unlabelled background remapped by a random
  monotonic or inverted curve), so that structures appear with contrasts no training scan has;
- :func:`bias_field`: a smooth multiplicative field (coil shading, beam hardening);
- :func:`simulate_resolution`: a scan acquired with thicker slices (0.5-8 mm along one axis, a
  Gaussian slice profile) or a coarser in-plane resolution, then interpolated back to the ROI grid
  the way the engine's trilinear resampling does;
- :func:`partial_volume`: a sub-voxel blur of every edge;
- :func:`domain_randomize`: all of them, each with its probability, followed by noise and a rescale to
  the 0-1 range the engine's normalisation gives.

The truth stays the fine label map: the network learns to draw the object as it is, from what a
coarse scan shows of it. Every function takes a ``numpy.random.Generator`` and is deterministic given it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def synthesize_contrast(img: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random intensities per label value; ``img`` and ``label`` are ROI arrays ``[k, j, i]`` (``img``
    normalised to about 0-1). A share of the real image's fine texture is kept so edges that the label
    map does not draw (fat planes, vessels) stay visible."""
    lab = label.astype(np.int64)
    values = np.unique(lab)
    remap = np.zeros(int(values.max()) + 1, dtype=np.float32)
    spread = np.zeros_like(remap)
    remap[values] = rng.uniform(0.0, 1.0, size=len(values))
    spread[values] = rng.uniform(0.0, 0.08, size=len(values))
    out = remap[lab] + spread[lab] * rng.standard_normal(lab.shape).astype(np.float32)
    background = lab == 0
    if background.any():
        x = np.clip(img, 0.0, 1.5)
        curve = np.clip(x, 0, None) ** rng.uniform(0.5, 2.0)
        if rng.random() < 0.5:
            curve = float(curve.max()) - curve
        lo, hi = sorted(rng.uniform(0.0, 1.0, size=2))
        out[background] = (lo + (hi - lo + 0.1) * curve)[background]
    texture = img - ndimage.gaussian_filter(img, 1.5)
    return (out + rng.uniform(0.0, 1.0) * texture).astype(np.float32)


def bias_field(img: np.ndarray, rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """``img`` times ``exp`` of a smooth random field (a 4-point-per-axis grid, cubic interpolation)."""
    coarse = rng.normal(0.0, rng.uniform(0.0, strength), size=(4, 4, 4))
    zoom = [n / 4.0 for n in img.shape]
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest")[tuple(slice(0, n) for n in img.shape)]
    pad = [(0, n - f) for n, f in zip(img.shape, field.shape)]
    field = np.pad(field, pad, mode="edge")
    return (img * np.exp(field)).astype(np.float32)


def _coarsen_axis(x: np.ndarray, axis: int, factor: float, phase: float = 0.0) -> np.ndarray:
    """``x`` as sampled with voxels ``factor`` times as thick along ``axis`` (Gaussian profile of FWHM
    one thick voxel, the first thick slice ``phase`` x ``factor`` voxels in), then linearly interpolated
    back to its own grid."""
    n = x.shape[axis]
    if factor <= 1.2 or n < 3:
        return x
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = factor / 2.355
    blurred = ndimage.gaussian_filter(x, sigma, mode="nearest")
    # Thick-slice centres (a random phase), then linear interpolation between them.
    positions = np.arange(phase * factor, n - 1 + 1e-6, factor)
    if len(positions) < 2:
        positions = np.array([0.0, n - 1.0])
    samples = np.take(blurred, np.round(positions).astype(int).clip(0, n - 1), axis=axis)
    grid = np.arange(n, dtype=np.float64)
    idx = np.interp(grid, positions, np.arange(len(positions), dtype=np.float64))
    lo = np.floor(idx).astype(int).clip(0, len(positions) - 1)
    hi = np.minimum(lo + 1, len(positions) - 1)
    w = (idx - lo).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n
    w = w.reshape(shape)
    return (np.take(samples, lo, axis=axis) * (1 - w) + np.take(samples, hi, axis=axis) * w).astype(np.float32)


def simulate_resolution(img: np.ndarray, spacing_mm, rng: np.random.Generator,
                        thickness_mm=(0.5, 8.0), p_in_plane: float = 0.3) -> np.ndarray:
    """A scan with slices of a random thickness (log-uniform in ``thickness_mm``) along one ROI axis
    (the k axis in half of the draws), and with ``p_in_plane`` a coarser resolution (0.5-2.5 mm) along
    the two others. ``spacing_mm`` is the ROI spacing ``[i, j, k]``."""
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    axis_kji = 0 if rng.random() < 0.5 else int(rng.integers(3))
    t = float(np.exp(rng.uniform(np.log(thickness_mm[0]), np.log(thickness_mm[1]))))
    out = _coarsen_axis(img, axis_kji, t / sp[2 - axis_kji], rng.random())
    if rng.random() < p_in_plane:
        r = float(rng.uniform(0.5, 2.5))
        for a in range(3):
            if a != axis_kji:
                out = _coarsen_axis(out, a, r / sp[2 - a], rng.random())
    return out


def partial_volume(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Gaussian blur of 0.3-1.0 voxels: edges spread over neighbouring voxels as a scanner's PSF does."""
    return ndimage.gaussian_filter(img, rng.uniform(0.3, 1.0)).astype(np.float32)


def rescale01(img: np.ndarray) -> np.ndarray:
    """Robust 0-1 rescale (0.5 and 99.5 percentiles), as the engine normalises an MR."""
    lo, hi = np.percentile(img, [0.5, 99.5])
    return ((img - lo) / max(float(hi - lo), 1e-6)).clip(-0.2, 1.5).astype(np.float32)


def domain_randomize(img: np.ndarray, label: np.ndarray, spacing_mm, rng: np.random.Generator, *,
                     p_contrast: float = 0.5, p_bias: float = 0.4, p_resolution: float = 0.5,
                     p_partial_volume: float = 0.4) -> np.ndarray:
    """The randomisations above, each with its probability, then Gaussian noise; ``[k, j, i]`` float32.
    A synthesised contrast is rescaled to 0-1 afterwards (a real image keeps its normalisation)."""
    x = np.asarray(img, dtype=np.float32)
    synthetic = rng.random() < p_contrast
    if synthetic:
        x = synthesize_contrast(x, label, rng)
    if rng.random() < p_partial_volume:
        x = partial_volume(x, rng)
    if rng.random() < p_bias:
        x = bias_field(np.clip(x, 0, None) + 0.05, rng)
    if rng.random() < p_resolution:
        x = simulate_resolution(x, spacing_mm, rng)
    if rng.random() < 0.6:
        x = x + rng.normal(0.0, rng.uniform(0.005, 0.05), size=x.shape).astype(np.float32)
    if synthetic or rng.random() < 0.2:
        x = rescale01(x)
    return x.astype(np.float32)
