"""Synthetic CT-like phantoms with exact labels, seeded and reproducible.

Structures are defined in physical (LPS, mm) space as deformed ellipsoids, so random voxel grids
(anisotropic spacing, oblique or flipped directions) sample the same anatomy. Intensities are
Hounsfield-like with partial volume at the borders (soft occupancy over about one voxel) and noise;
labels are the exact hard occupancy at voxel centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from claraseg.io.image import Image, LabelInfo


@dataclass(frozen=True)
class Organ:
    name: str
    hu: float  # mean intensity
    centre: tuple[float, float, float]  # mm relative to the body centre (x: right->left, y: ant->post, z: foot->head)
    radii: tuple[float, float, float]  # mm
    color: tuple[float, float, float]


# Rough abdominal layout, LPS offsets in mm. Values are deliberately plausible, not anatomical truth.
ORGANS = (
    Organ("liver", 105, (-45, -5, 20), (60, 50, 55), (0.87, 0.47, 0.33)),
    Organ("spleen", 115, (65, 25, 30), (22, 30, 38), (0.62, 0.35, 0.53)),
    Organ("kidney_right", 170, (-45, 45, -15), (18, 22, 32), (0.72, 0.63, 0.37)),
    Organ("kidney_left", 170, (45, 45, -10), (18, 22, 32), (0.72, 0.60, 0.40)),
    Organ("vertebra", 600, (0, 62, 0), (16, 15, 70), (0.95, 0.94, 0.85)),
    Organ("aorta", 220, (12, 35, 0), (10, 10, 70), (0.88, 0.25, 0.25)),
    Organ("stomach", 25, (35, -40, 40), (32, 22, 26), (0.85, 0.75, 0.55)),
)


def random_direction(rng: np.random.Generator, max_angle_deg: float = 30.0, flips: bool = True) -> np.ndarray:
    """A random rotation of at most ``max_angle_deg`` about a random axis, optionally with axis flips."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx
    if flips:
        r = r @ np.diag(rng.choice([-1.0, 1.0], size=3))
    return r


def make_phantom(
    seed: int = 0,
    size_ijk: tuple[int, int, int] = (96, 96, 48),
    spacing: tuple[float, float, float] | None = None,
    direction: np.ndarray | None = None,
    oblique: bool = True,
    noise_hu: float = 15.0,
    organs: tuple[Organ, ...] = ORGANS,
) -> tuple[Image, Image]:
    """Make ``(image, label)``: an int16 CT-like volume and its uint8 label map on the same grid.

    Spacing defaults to a random anisotropic one (in-plane 2.8-3.6 mm, slices 3-6 mm for the default
    size, so the field of view covers the body); direction defaults to a random rotation (with flips)
    when ``oblique`` and to identity otherwise. Shapes, sizes and positions vary with the seed.
    """
    rng = np.random.default_rng(seed)
    ni, nj, nk = size_ijk
    if spacing is None:
        fov = 330.0  # mm, in plane
        inplane = fov / max(ni, nj) * rng.uniform(0.9, 1.1)
        spacing = (inplane, inplane, max(inplane, 240.0 / nk * rng.uniform(0.9, 1.2)))
    spacing = np.asarray(spacing, dtype=np.float64)
    if direction is None:
        direction = random_direction(rng) if oblique else np.eye(3)
    direction = np.asarray(direction, dtype=np.float64)
    body_centre = rng.normal(0.0, 5.0, size=3)
    # The grid's centre sits on the body centre, so any orientation keeps the body in view.
    half = (np.array([ni, nj, nk]) - 1) / 2.0
    origin = body_centre - direction @ (spacing * half)

    kk, jj, ii = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3).astype(np.float32)
    xyz = (ijk * spacing.astype(np.float32)) @ direction.T.astype(np.float32) + origin.astype(np.float32)
    rel = xyz - body_centre.astype(np.float32)
    voxel = float(np.min(spacing))

    # Body: an elliptic cylinder in air: subcutaneous fat, a muscle wall, and an abdominal cavity of
    # fat and bowel (low-frequency texture) that the organs sit in.
    body_r = np.array([150, 110], dtype=np.float32) * rng.uniform(0.9, 1.1, size=2).astype(np.float32)
    hu = np.full(len(rel), -1000.0, dtype=np.float32)
    for inset, tissue_hu in ((0.0, -100.0), (15.0, 45.0), (27.0, -40.0)):
        r = body_r - np.float32(inset)
        f = np.sqrt((rel[:, 0] / r[0]) ** 2 + (rel[:, 1] / r[1]) ** 2)
        occ = _soft(f, voxel / float(r.min()))
        hu = hu * (1 - occ) + tissue_hu * occ
    cavity = _soft(np.sqrt((rel[:, 0] / (body_r[0] - 27)) ** 2 + (rel[:, 1] / (body_r[1] - 27)) ** 2),
                   voxel / float(body_r.min() - 27))
    hu += cavity * _texture(rel, rng, amplitude=35.0, wavelength_mm=(25.0, 60.0))

    label = np.zeros(len(rel), dtype=np.uint8)
    labels = {}
    for value, organ in enumerate(organs, start=1):
        f, scale = _organ_field(organ, rel, rng)
        occ = _soft(f, voxel / scale)
        organ_hu = organ.hu + rng.normal(0, 8) + _texture(rel, rng, amplitude=6.0, wavelength_mm=(10.0, 30.0))
        hu = hu * (1 - occ) + organ_hu * occ
        label[f < 1.0] = value
        labels[value] = LabelInfo(organ.name, organ.color)
    hu += rng.normal(0, noise_hu, size=hu.shape).astype(np.float32)
    shape = (nk, nj, ni)
    image = Image(np.clip(np.rint(hu), -1024, 3071).astype(np.int16).reshape(shape), origin, spacing, direction,
                  metadata={"modality": "CT", "phantom_seed": seed})
    lab = Image(label.reshape(shape), origin, spacing, direction, labels, {"is_label": True, "phantom_seed": seed})
    return image, lab


def _soft(f: np.ndarray, width: float) -> np.ndarray:
    """Occupancy in [0, 1]: 1 well inside (f << 1), 0 outside, linear over about one voxel at f = 1."""
    return np.clip(0.5 - (f - 1.0) / (2.0 * max(width, 1e-3)), 0.0, 1.0).astype(np.float32)


def _organ_field(organ: Organ, rel: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Implicit field of a randomly scaled, rotated and smoothly deformed ellipsoid (< 1 inside)."""
    centre = np.asarray(organ.centre) + rng.normal(0, 4, size=3)
    radii = np.asarray(organ.radii) * rng.uniform(0.8, 1.2, size=3)
    rot = random_direction(rng, 20.0, flips=False)
    local = (rel - centre.astype(np.float32)) @ rot.astype(np.float32)
    q = local / radii.astype(np.float32)
    f = np.sqrt(np.sum(q * q, axis=1))
    # Low-frequency bumps make shapes organ-like rather than ellipsoids.
    for _ in range(3):
        w = rng.normal(size=3)
        w = (w / np.linalg.norm(w) * rng.uniform(1.5, 3.5)).astype(np.float32)
        f = f + np.float32(rng.uniform(0.04, 0.1)) * np.sin(q @ w + np.float32(rng.uniform(0, 2 * np.pi)))
    return f, float(radii.min())


def _texture(rel: np.ndarray, rng: np.random.Generator, amplitude: float,
             wavelength_mm: tuple[float, float], waves: int = 4) -> np.ndarray:
    """Smooth random intensity variation (sum of plane waves, peak about ``amplitude`` HU)."""
    out = np.zeros(len(rel), dtype=np.float32)
    for _ in range(waves):
        k = rng.normal(size=3)
        k = (k / np.linalg.norm(k) * 2 * np.pi / rng.uniform(*wavelength_mm)).astype(np.float32)
        out += np.sin(rel @ k + np.float32(rng.uniform(0, 2 * np.pi)))
    return out * np.float32(amplitude / np.sqrt(waves))
