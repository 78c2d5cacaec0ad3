"""Intensity normalisation, driven by the ``intensity`` entry of a bundle's ``claraseg`` metadata.

The same function prepares training volumes and session images, so a model sees identical inputs in both.
Spec format (per modality, ``default`` names the modality to use when the image does not say)::

    {"CT": {"type": "window", "window": [-250, 350]},
     "MR": {"type": "percentile", "percentiles": [0.5, 99.5]},
     "default": "MR"}

``window`` maps the HU window linearly onto [0, 1] and clips; ``percentile`` maps the given percentiles
of the image onto [0, 1] and clips to [0, ``clip_max``] (default 1.5, so bright spots stay brighter).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from claraseg.errors import ConfigError, InvalidImageError
from claraseg.io import Image

#: Percentiles are estimated on at most this many voxels (a strided subsample), to keep session open fast.
PERCENTILE_SAMPLE = 2_000_000


def guess_modality(image: Image) -> str:
    """The image's modality: its metadata when present, else CT if it holds air-like values (< -500)."""
    m = str(image.metadata.get("modality", "") or image.metadata.get("Modality", "")).upper()
    if m in ("CT", "MR"):
        return m
    a = image.array
    step = max(1, a.size // PERCENTILE_SAMPLE)
    return "CT" if float(np.percentile(a.ravel()[::step], 1)) < -500 else "MR"


def modality_spec(spec: dict[str, Any], modality: str) -> dict[str, Any]:
    """The normalisation entry for ``modality`` (falling back to ``spec['default']``)."""
    if modality in spec:
        return spec[modality]
    fallback = spec.get("default")
    if fallback not in spec:
        raise ConfigError(f"intensity spec has no entry for modality {modality!r} and no valid 'default': {spec}")
    return spec[fallback]


def intensity_params(array: np.ndarray, modality: str, spec: dict[str, Any]) -> tuple[float, float, float]:
    """``(lo, hi, clip_max)``: normalised = clip((x - lo) / (hi - lo), 0, clip_max). Percentiles are
    estimated on a strided subsample of at most :data:`PERCENTILE_SAMPLE` voxels."""
    entry = modality_spec(spec, modality)
    kind = entry.get("type")
    if kind == "window":
        lo, hi = (float(v) for v in entry["window"])
        return lo, hi, 1.0
    if kind == "percentile":
        flat = array.ravel()
        sample = flat[:: max(1, flat.size // PERCENTILE_SAMPLE)].astype(np.float32)
        if not np.isfinite(sample).all():
            raise InvalidImageError("the image holds NaN or infinite voxels; replace them before segmenting")
        lo, hi = (float(v) for v in np.percentile(sample, entry.get("percentiles", [0.5, 99.5])))
        return lo, max(hi, lo + 1e-6), float(entry.get("clip_max", 1.5))
    raise ConfigError(f"unknown intensity normalisation type {kind!r} (use 'window' or 'percentile')")


def apply_intensity(x, params: tuple[float, float, float]):
    """Apply :func:`intensity_params` to a float numpy array or torch tensor (a new array)."""
    lo, hi, cmax = params
    y = (x - lo) / (hi - lo)
    return y.clip(0.0, cmax) if isinstance(y, np.ndarray) else y.clamp(0.0, cmax)


def normalise_intensity(array: np.ndarray, modality: str, spec: dict[str, Any],
                        dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Normalise voxels to roughly [0, 1] as the spec says for ``modality``; returns a new array of ``dtype``."""
    params = intensity_params(array, modality, spec)
    return apply_intensity(array.astype(np.float32), params).astype(dtype, copy=False)
