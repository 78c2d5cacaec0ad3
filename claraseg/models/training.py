"""Per-kind training samples for the interactive models (reused by fine-tune jobs).

A training sample is made the way the engine prepares an inference input: an ROI (rotated, flipped and
scaled at random for augmentation) is resampled from a normalised volume with
:func:`claraseg.guidance.sample_roi`, clicks are simulated in it, and the channels are assembled by the
same functions the engine calls. Every constant comes from the bundle's ``claraseg`` settings. Targets
are class-agnostic: one structure (or a union) at a time, as 0/1.

The building blocks live beside this module and are re-exported here:

- :mod:`claraseg.models.inputs`: the network inputs (``interactive_input``, ``dextr_input``, sigma, margin);
- :mod:`claraseg.models.volumes`: :class:`TrainingVolume` / :func:`volume_from_images`, field-of-view cuts;
- :mod:`claraseg.models.augment`: rotations, intensity augmentation, domain randomisation;
- :mod:`claraseg.models.click_sampling`: simulated clicks and imperfect current masks.

Entry points: :func:`make_sample` (one (input, target) pair for a kind), :func:`make_loss`, :func:`predictor`.
"""

from __future__ import annotations

import numpy as np
import torch

from claraseg.errors import TrainingDataError
from claraseg.guidance import Roi, object_spacing, random_click, sample_roi
from claraseg.guidance.roi import slice_axes
from claraseg.models.augment import augment_intensity, augment_sample, random_rotation
from claraseg.models.click_sampling import corrupt_mask, refine_clicks, simulate_clicks
from claraseg.models.inputs import (
    DEXTR_CLICK_CHANNELS,
    Predictor,
    deepgrow_sigma,
    dextr_input,
    dextr_margin,
    dextr_takes_clicks,
    interactive_input,
    network_input,
)
from claraseg.models.train_config import train_sampling
from claraseg.models.volumes import Structure, TrainingVolume, cut_field_of_view, volume_from_images

__all__ = [
    "DEXTR_CLICK_CHANNELS", "P_CUT_FIELD_OF_VIEW", "Predictor", "Structure", "TrainingVolume",
    "augment_intensity", "corrupt_mask", "cut_field_of_view", "deepgrow_sample", "deepgrow_sigma",
    "dextr_input", "dextr_margin", "dextr_sample", "dextr_takes_clicks", "interactive_input", "make_loss",
    "make_sample", "network_input", "predictor", "random_rotation", "volume_from_images",
]

#: Share of domain-randomised samples whose scan is first cut to a smaller field of view.
P_CUT_FIELD_OF_VIEW = 0.3


def _choose_spacing(settings: dict, extent_mm: float, roi_voxels: int, rng: np.random.Generator,
                    train: dict | None = None) -> float:
    """ROI spacing of a training sample: the first click's field of view (``p_first_click_roi``), else the spacing at
    which the object's extent, times a random factor, fills ``fill`` of the ROI. The factor is uniform
    in 0.85..1.4, or log-uniform in train.json's ``roi_scale_range`` when set: a low end below 1 lets
    the object overflow the ROI, as a refinement ROI sized from an under-segmented mask does."""
    lo, hi = settings["spacing_range_mm"]
    sampling = train_sampling("deepgrow", train)
    if rng.random() < float(sampling["p_first_click_roi"]):  # the first click's field of view: objects small or cut off
        top = 2.0 if sampling["domain_randomization"] else 1.5
        s = settings["first_click_spacing_mm"] * float(np.exp(rng.uniform(np.log(0.7), np.log(top))))
        return float(np.clip(s, lo, hi))
    scale = (train or {}).get("roi_scale_range")
    if scale is None:
        factor = rng.uniform(0.85, 1.4)
    else:
        a, b = (float(v) for v in scale)
        factor = float(np.exp(rng.uniform(np.log(a), np.log(b))))
    return object_spacing(extent_mm * factor, roi_voxels, settings["fill"], (lo, hi))


def _object_roi_label(volume: TrainingVolume, roi: Roi):
    lab = sample_roi(volume.label, volume.spacing, roi, mode="nearest").numpy().astype(np.int16)
    return lab


def deepgrow_sample(volume: TrainingVolume, structure: Structure, settings: dict, rng: np.random.Generator,
                    predict: Predictor | None = None, train: dict | None = None):
    """One DeepGrow 3D or 2D sample ``(input [4, k, j, i], target [1, k, j, i])`` or None when the
    drawn ROI misses the structure."""
    train = train or {}
    randomize = bool(train_sampling("deepgrow", train)["domain_randomization"])
    cut = False
    if randomize and rng.random() < P_CUT_FIELD_OF_VIEW:
        volume, structure = cut_field_of_view(volume, structure, rng)
        cut = True
    sp = volume.spacing
    # Spacing follows the inference ROI; the sampled crop may be smaller (settings["train_roi_size"]).
    size = tuple(int(v) for v in settings["roi_size"])
    crop = tuple(int(v) for v in settings.get("train_roi_size", size))
    coords = structure.coords
    if settings["kind"] == "deepgrow2d":
        axis = int(rng.integers(3))
        slices, counts = np.unique(coords[:, axis], return_counts=True)
        ok = slices[counts >= 8]
        if len(ok) == 0:
            return None
        sl = int(ok[rng.integers(len(ok))])
        pts = coords[coords[:, axis] == sl]
        others = [a for a in range(3) if a != axis]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        extent = float(((hi - lo + 1) * sp)[others].max())
        s = _choose_spacing(settings, extent, size[0], rng, train)
        a = rng.uniform(-np.pi / 6, np.pi / 6)
        base = slice_axes(axis)
        u, v = base[:, 0], base[:, 1]
        flip = rng.choice([-1.0, 1.0], size=2)
        axes = np.stack([flip[0] * (np.cos(a) * u + np.sin(a) * v), flip[1] * (-np.sin(a) * u + np.cos(a) * v),
                         base[:, 2]], axis=1)
        centre = (lo + hi) / 2.0
        jitter = rng.uniform(-0.2, 0.2, 3) * size[0] * s / sp
        jitter[axis] = 0
        if rng.random() < 0.3:
            centre = pts[rng.integers(len(pts))].astype(np.float64)
            jitter[:] = 0
        spacing = np.array([s, s, sp[axis]])
    else:
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        extent = float(((hi - lo + 1) * sp).max())
        s = _choose_spacing(settings, extent, size[0], rng, train)
        axes = random_rotation(rng, 25.0)
        centre = (lo + hi) / 2.0
        jitter = rng.uniform(-0.2, 0.2, 3) * crop[0] * s / sp
        if rng.random() < 0.3:  # the first click's ROI is centred on the click
            centre = coords[rng.integers(len(coords))].astype(np.float64)
            jitter[:] = 0
        spacing = np.array([s, s, s])
    roi = Roi((centre + jitter) * sp, spacing, crop, axes)
    roi_label = _object_roi_label(volume, roi)
    gt = np.isin(roi_label, structure.values).astype(np.uint8)
    if gt.sum() < 6:
        return None
    img = augment_sample(sample_roi(volume.image, sp, roi), roi_label, roi.spacing, rng, randomize)
    sigma = deepgrow_sigma(settings, roi.spacing)
    x = simulate_clicks(img, gt, roi_label, settings, sigma, rng, predict, train, cut)
    return x, torch.from_numpy(gt[None].astype(np.float32))


def dextr_sample(volume: TrainingVolume, structure: Structure, settings: dict, rng: np.random.Generator,
                 predict: Predictor | None = None, train: dict | None = None):
    """One DEXTR3D sample: extreme points (symmetric jitter) of the structure in a randomly rotated frame,
    their box plus the margin stretched onto the ROI. Returns ``(input [2, ...], target [1, ...])``."""
    randomize = bool(train_sampling("dextr3d", train)["domain_randomization"])
    if randomize and rng.random() < P_CUT_FIELD_OF_VIEW:
        volume, structure = cut_field_of_view(volume, structure, rng)
    sp = volume.spacing
    size = tuple(int(v) for v in settings["roi_size"])
    axes = random_rotation(rng, 25.0) if rng.random() < 0.7 else np.diag(rng.choice([-1.0, 1.0], size=3))
    coords = structure.coords
    y = (coords * sp) @ axes  # positions along the ROI's axes (mm)
    centroid = y.mean(axis=0)
    tol = 0.5 * float(sp.min())
    idx = []
    for a in range(3):
        for ext in (y[:, a].min(), y[:, a].max()):
            cand = np.flatnonzero(np.abs(y[:, a] - ext) <= tol)
            idx.append(cand[np.argmin(((y[cand] - centroid) ** 2).sum(axis=1))])
    jit = int(settings.get("train_jitter_vox", 3))
    pts_idx = coords[idx] + rng.integers(-jit, jit + 1, size=(6, 3))
    yp = (pts_idx * sp) @ axes
    takes = dextr_takes_clicks(settings)
    train = train or {}
    sampling = train_sampling("dextr3d", train)
    correct = takes and rng.random() < float(sampling["p_correction"])
    if correct and rng.random() < 0.5:
        # Points of an estimate, not of the truth (a click model's result re-fitted): the box shrunk or
        # grown about its centre along each ROI axis, so the object may overflow it.
        a, b = (float(v) for v in sampling["box_scale_range"])
        c = (yp.min(axis=0) + yp.max(axis=0)) / 2.0
        yp = c + (yp - c) * rng.uniform(a, b, size=3)
    margin = dextr_margin(settings, yp.max(axis=0) - yp.min(axis=0))
    lo, hi = yp.min(axis=0) - margin, yp.max(axis=0) + margin
    spacing = np.maximum(hi - lo, 1e-3) / (np.asarray(size) - 1.0)
    roi = Roi(axes @ ((lo + hi) / 2.0), spacing, size, axes)
    roi_label = _object_roi_label(volume, roi)
    gt = np.isin(roi_label, structure.values).astype(np.uint8)
    if gt.sum() < 6:
        return None
    img = augment_sample(sample_roi(volume.image, sp, roi), roi_label, roi.spacing, rng, randomize)
    sigma = settings["guidance"]["sigma_vox"]
    pts_roi = (yp - lo) / spacing
    if not correct:
        return dextr_input(img, pts_roi, sigma, takes), torch.from_numpy(gt[None].astype(np.float32))
    if predict is not None and rng.random() < float(sampling["p_model_in_loop"]):
        # Clicks on the network's own errors: from the points alone, then with the clicks so far.
        fg, bg = [], []
        prev = np.zeros_like(gt)
        steps = int(rng.integers(1, int(sampling["max_loop_clicks"]) + 1))
        for _ in range(steps):
            prev = (predict(dextr_input(img, pts_roi, sigma, True, fg, bg, prev)) > settings["threshold"])
            click = random_click(prev, gt, rng, p_deepest=0.6)
            if click is None:
                break
            (fg if click[1] else bg).append(click[0])
        prev = prev.astype(np.uint8)
        if not fg and not bg:
            return dextr_input(img, pts_roi, sigma, True, [], [], prev), torch.from_numpy(gt[None].astype(np.float32))
    else:
        prev, fg, bg = refine_clicks(gt, roi_label, rng, float(sampling["p_local_errors"]))
    x = dextr_input(img, pts_roi, sigma, True, fg, bg, prev)
    return x, torch.from_numpy(gt[None].astype(np.float32))


def make_sample(kind: str, volume: TrainingVolume, structure: Structure, settings: dict, rng: np.random.Generator,
                predict: Predictor | None = None, train: dict | None = None):
    """One training sample ``(input, target)`` for an interactive ``kind`` (None if the draw missed the
    structure: draw again). ``predict`` enables clicks on the network's own predictions."""
    if kind in ("deepgrow3d", "deepgrow2d"):
        return deepgrow_sample(volume, structure, settings, rng, predict, train)
    if kind == "dextr3d":
        return dextr_sample(volume, structure, settings, rng, predict, train)
    raise TrainingDataError(f"no interactive training samples for model kind {kind!r}")


def make_loss(kind: str):
    """The training loss of a kind: Dice + cross-entropy on logits (sigmoid for the one-object
    interactive models, softmax over labels for segmentation)."""
    from monai.losses import DiceCELoss

    if kind == "segmentation":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    return DiceCELoss(sigmoid=True)


def predictor(net: torch.nn.Module, kind: str) -> Predictor:
    """Wrap a network as a :data:`Predictor` (no gradients; sigmoid probabilities, ``[k, j, i]``)."""

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            out = torch.sigmoid(net(network_input(x, kind)))[0, 0]
        return (out[None] if kind == "deepgrow2d" else out).numpy()

    return run
