"""Augmentation of training samples: random rotations and flips of the ROI, intensity augmentation and
SynthSeg-style domain randomisation (:mod:`claraseg.models.synth`)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from claraseg.models.synth import domain_randomize


def random_rotation(rng: np.random.Generator, max_deg: float, flips: bool = True) -> np.ndarray:
    """A rotation of at most ``max_deg`` about a random axis, times random axis flips."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(-max_deg, max_deg))
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx
    return r @ np.diag(rng.choice([-1.0, 1.0], size=3)) if flips else r


def augment_intensity(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random contrast/brightness, gamma, inversion (other MR contrasts), blur, thick slices and noise."""
    x = img.numpy().copy()
    if rng.random() < 0.8:
        x = x * rng.uniform(0.75, 1.25) + rng.uniform(-0.12, 0.12)
    if rng.random() < 0.3:
        x = np.clip(x, 0, None) ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.1:
        x = float(x.max()) - x
    if rng.random() < 0.2:
        sig = [0.0 if n == 1 else rng.uniform(0.4, 1.2) for n in x.shape]
        x = ndimage.gaussian_filter(x, sig)
    if rng.random() < 0.15 and min(x.shape) > 1:
        sig = [0.0, 0.0, 0.0]
        sig[int(rng.integers(3))] = rng.uniform(1.0, 3.0)
        x = ndimage.gaussian_filter(x, sig)
    if rng.random() < 0.6:
        x = x + rng.normal(0, rng.uniform(0.005, 0.06), size=x.shape)
    return torch.from_numpy(x.astype(np.float32))


#: Share of domain-randomised samples that get :func:`claraseg.models.synth.domain_randomize`; the rest
#: get :func:`augment_intensity` as without it.
P_DOMAIN = 0.7


def augment_sample(img: torch.Tensor, roi_label: torch.Tensor | np.ndarray, roi_spacing, rng: np.random.Generator,
             randomize: bool) -> torch.Tensor:
    """The intensity augmentation of a sample: SynthSeg-style domain randomisation (with ``randomize``,
    :data:`P_DOMAIN` of the samples) or the plain intensity augmentation."""
    if randomize and rng.random() < P_DOMAIN:
        lab = np.asarray(roi_label)
        x = img.numpy()
        if x.shape[0] == 1:  # a 2D slice ROI: randomise in 2D (no thick slices across a single slice)
            out = domain_randomize(x[0][None], lab.reshape(x.shape)[0][None], roi_spacing, rng, p_resolution=0.0)
        else:
            out = domain_randomize(x, lab.reshape(x.shape), roi_spacing, rng)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    return augment_intensity(img, rng)
