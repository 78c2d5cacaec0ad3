"""Per-sample training building blocks for the interactive models (reused by fine-tune jobs).

A training sample is made the way the engine prepares an inference input: an ROI (rotated, flipped and
scaled at random for augmentation) is resampled from a normalised volume with
:func:`claraseg.guidance.sample_roi`, clicks are simulated in it (ANCHORS.md protocol plus random
variants, some with the network in the loop), and the channels are assembled by the same
:func:`interactive_input` / :func:`dextr_input` the engine calls. Every constant comes from the bundle's
``claraseg`` settings. Targets are class-agnostic: one structure (or a union) at a time, as 0/1.

Entry points: :func:`make_sample` (one (input, target) pair for a kind), :func:`make_loss`,
:class:`TrainingVolume` / :func:`volume_from_images` (wrap an image and its label map).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from claraseg.errors import TrainingDataError
from claraseg.guidance import (
    Roi,
    gaussian_heatmap,
    object_spacing,
    random_click,
    sample_roi,
    sigma_in_voxels,
)
from claraseg.guidance.roi import slice_axes
from claraseg.io import Image
from claraseg.models.bundle import DEXTR_CHANNELS
from claraseg.models.preprocess import guess_modality, normalise_intensity
from claraseg.models.synth import domain_randomize
from claraseg.models.train_config import train_sampling

#: A callable that maps a network input ``[C, ...]`` to foreground probabilities of the same spatial shape.
Predictor = Callable[[torch.Tensor], np.ndarray]


# ----- inputs (shared with the engine) ---------------------------------------------------------------
def interactive_input(image_roi: torch.Tensor, fg_roi, bg_roi, mask_roi, sigma_vox) -> torch.Tensor:
    """DeepGrow input ``[4, k, j, i]``: image, foreground heat map, background heat map, current mask.

    ``fg_roi``/``bg_roi`` are (N, 3) ROI positions ``[i, j, k]``; ``mask_roi`` is 0/1 on the ROI grid.
    """
    shape = tuple(image_roi.shape)
    fg = gaussian_heatmap(np.asarray(fg_roi, dtype=np.float64).reshape(-1, 3), shape, sigma_vox)
    bg = gaussian_heatmap(np.asarray(bg_roi, dtype=np.float64).reshape(-1, 3), shape, sigma_vox)
    mask = torch.as_tensor(np.asarray(mask_roi, dtype=np.float32))
    return torch.stack([image_roi.float(), torch.from_numpy(fg), torch.from_numpy(bg), mask])


#: The channels of a DEXTR3D model that also takes correction clicks and the current mask.
DEXTR_CLICK_CHANNELS = DEXTR_CHANNELS[1]


def dextr_takes_clicks(settings: dict) -> bool:
    """Whether a DEXTR3D bundle's network also reads correction clicks and the current mask
    (``channels`` = :data:`DEXTR_CLICK_CHANNELS`), or only the image and the extreme points."""
    return list(settings.get("channels", [])) == DEXTR_CLICK_CHANNELS


def dextr_input(image_roi: torch.Tensor, points_roi, sigma_vox, clicks: bool = False, fg_roi=(), bg_roi=(),
                mask_roi=None) -> torch.Tensor:
    """DEXTR3D input: image and the extreme points' heat map ``[2, k, j, i]``; with ``clicks`` also the
    foreground and background click heat maps and the current mask ``[5, k, j, i]`` (all zero for a
    first segmentation from the points). Positions are (N, 3) ROI ``[i, j, k]``."""
    shape = tuple(image_roi.shape)

    def heat(points):
        return torch.from_numpy(gaussian_heatmap(np.asarray(points, dtype=np.float64).reshape(-1, 3), shape, sigma_vox))

    chans = [image_roi.float(), heat(points_roi)]
    if clicks:
        mask = torch.zeros(shape) if mask_roi is None else torch.as_tensor(np.asarray(mask_roi, dtype=np.float32))
        chans += [heat(fg_roi), heat(bg_roi), mask.float()]
    return torch.stack(chans)


def dextr_margin(settings: dict, extent_mm) -> np.ndarray:
    """The margin (mm, per axis) a DEXTR3D box gets on each side: ``margin_mm``, plus ``margin_rel`` x the
    points' extent along that axis when the bundle sets it (room for an object the points under-span)."""
    extent = np.asarray(extent_mm, dtype=np.float64)
    return float(settings["margin_mm"]) + float(settings.get("margin_rel", 0.0)) * extent


def deepgrow_sigma(settings: dict, roi_spacing) -> np.ndarray:
    """Click heat-map sigma in ROI voxels for a DeepGrow model (sigma in mm, floored in voxels)."""
    g = settings["guidance"]
    return sigma_in_voxels(g["sigma_mm"], roi_spacing, g.get("min_sigma_vox", 0.0))


def network_input(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Add the batch axis and, for 2D models, drop the ROI's k axis of size 1: ``[C, 1, j, i]`` -> ``[1, C, j, i]``."""
    return (x[:, 0] if kind == "deepgrow2d" else x)[None]


# ----- training volumes ----------------------------------------------------------------------------------
@dataclass
class Structure:
    """One class-agnostic target: the voxels whose label is in ``values``."""

    name: str
    values: tuple[int, ...]
    coords: np.ndarray  # (N, 3) int32 voxel indices [i, j, k]


@dataclass
class TrainingVolume:
    """A normalised image ``[k, j, i]`` float32 with its label map and the structures to train on."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: np.ndarray
    structures: list[Structure] = field(default_factory=list)


def volume_from_images(name: str, image: Image, label: Image, intensity: dict, *, min_voxels: int = 50,
                       exclude: Sequence[str] = (), names: dict[int, str] | None = None,
                       unions: dict[str, tuple[int, ...]] | None = None, modality: str | None = None) -> TrainingVolume:
    """Normalise ``image`` with the bundle's ``intensity`` spec and list the label's structures of at
    least ``min_voxels`` voxels, leaving out the names in ``exclude`` (held-out structures).

    ``unions`` adds targets made of several label values (e.g. a whole hippocampus from its two parts).
    """
    image.check_same_grid(label)
    lab = np.asarray(label.array)
    if lab.max() > 32767 or lab.min() < 0:
        raise TrainingDataError(f"{name}: label values must lie in 0..32767")
    lab = lab.astype(np.int16)
    names = names if names is not None else {v: info.name for v, info in label.labels.items()}
    norm = normalise_intensity(image.array, modality or guess_modality(image), intensity)
    objects = ndimage.find_objects(lab)
    structures = []
    targets = [(names.get(v, f"label_{v}"), (v,)) for v in range(1, len(objects) + 1) if objects[v - 1] is not None]
    targets += list((unions or {}).items())
    for sname, values in targets:
        if sname in exclude:
            continue
        kji = np.argwhere(np.isin(lab, values))
        if len(kji) >= min_voxels:
            structures.append(Structure(sname, tuple(int(v) for v in values), kji[:, ::-1].astype(np.int32)))
    return TrainingVolume(name, norm, lab, image.spacing.copy(), structures)


# ----- augmentation ---------------------------------------------------------------------------------------
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


#: Share of domain-randomised samples whose scan is first cut to a smaller field of view.
P_CUT_FIELD_OF_VIEW = 0.3
#: Share of domain-randomised samples that get :func:`claraseg.models.synth.domain_randomize`; the rest
#: get :func:`augment_intensity` as without it.
P_DOMAIN = 0.7


def _augment(img: torch.Tensor, roi_label: torch.Tensor | np.ndarray, roi_spacing, rng: np.random.Generator,
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


def _squeeze(a: np.ndarray) -> np.ndarray:
    return a[0] if a.shape[0] == 1 else a


def corrupt_mask(gt: np.ndarray, roi_label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An imperfect "current mask" for refinement training (an earlier prediction, auto-segmentation or a
    painted segment): dilated, eroded, cut, smoothed, leaking into a neighbour or only a part. ``[k, j, i]``."""
    g = _squeeze(gt).astype(bool)
    lab = _squeeze(roi_label)
    st = ndimage.generate_binary_structure(g.ndim, 1)
    m = g.copy()
    for op in rng.choice(6, size=int(rng.integers(1, 3)), replace=False):
        if op == 0:
            m = ndimage.binary_dilation(m, st, iterations=int(rng.integers(1, 4)))
        elif op == 1:
            m = ndimage.binary_erosion(m, st, iterations=int(rng.integers(1, 4)))
        elif op == 2 and m.any():
            pts = np.argwhere(m)
            p = pts[rng.integers(len(pts))]
            n = rng.normal(size=g.ndim)
            grid = np.indices(g.shape).reshape(g.ndim, -1).T
            m = m & ((grid - p) @ n <= 0).reshape(g.shape)
        elif op == 3:
            m = ndimage.gaussian_filter(m.astype(np.float32), rng.uniform(1.0, 3.0)) > rng.uniform(0.3, 0.7)
        elif op == 4:
            near = ndimage.binary_dilation(g, st, iterations=3) & ~g & (lab > 0)
            if near.any():
                vals = np.unique(lab[near])
                m = m | (lab == vals[rng.integers(len(vals))])
        elif op == 5 and m.any():
            pts = np.argwhere(m)
            p = pts[rng.integers(len(pts))]
            r = rng.uniform(2, 8)
            grid = np.indices(g.shape).reshape(g.ndim, -1).T
            ball = (((grid - p) ** 2).sum(axis=1) <= r * r).reshape(g.shape)
            m = m & ball if rng.random() < 0.5 else m | ball
    if np.array_equal(m, g):
        m = ndimage.binary_dilation(g, st, iterations=2)
    return m.reshape(gt.shape).astype(np.uint8)


def _fill_ball(work: np.ndarray, gt: np.ndarray, kji, radius: float) -> None:
    """Make ``work`` equal to ``gt`` in a ball around a clicked voxel, so the next simulated click goes elsewhere."""
    lo = [max(0, int(c - radius)) for c in kji]
    hi = [min(n, int(c + radius) + 1) for c, n in zip(kji, work.shape)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    work[sl] = gt[sl]


def _random_inside(mask: np.ndarray, rng: np.random.Generator):
    pts = np.argwhere(mask)
    return None if len(pts) == 0 else pts[rng.integers(len(pts))][::-1]


def cut_field_of_view(volume: TrainingVolume, structure: Structure, rng: np.random.Generator):
    """The volume as a scan with a smaller field of view that cuts the structure: a thin slab (15-80 mm)
    or one side of a plane through the structure, along k in 60 % of the draws, else i or j.
    Returns ``(volume, structure)`` views (the label outside the new field of view is gone, as in a
    real scan), or the inputs unchanged when the cut would leave fewer than 30 voxels of the structure."""
    axis = 2 if rng.random() < 0.6 else int(rng.integers(2))
    coords = structure.coords
    n = volume.image.shape[2 - axis]
    c = int(coords[rng.integers(len(coords)), axis])
    if rng.random() < 0.5:
        half = rng.uniform(15.0, 80.0) / float(volume.spacing[axis]) / 2.0
        shift = rng.uniform(-half, half)
        lo, hi = int(round(c + shift - half)), int(round(c + shift + half)) + 1
    elif rng.random() < 0.5:
        lo, hi = c, n
    else:
        lo, hi = 0, c + 1
    lo, hi = max(0, lo), min(n, hi)
    keep = (coords[:, axis] >= lo) & (coords[:, axis] < hi)
    if keep.sum() < 30 or (lo == 0 and hi == n):
        return volume, structure
    sl = [slice(None)] * 3
    sl[2 - axis] = slice(lo, hi)
    shift_ijk = np.zeros(3, dtype=np.int32)
    shift_ijk[axis] = lo
    cut = TrainingVolume(volume.name, volume.image[tuple(sl)], volume.label[tuple(sl)], volume.spacing)
    return cut, Structure(structure.name, structure.values, coords[keep] - shift_ijk)


def _touches_border(gt: np.ndarray) -> bool:
    """Whether a ROI target reaches the ROI's faces (the object is cut by the ROI)."""
    g = _squeeze(gt).astype(bool)
    return bool(any(np.take(g, i, axis=a).any() for a in range(g.ndim) for i in (0, -1)))


# ----- one sample per kind -----------------------------------------------------------------------------------
def _choose_spacing(settings: dict, extent_mm: float, roi_voxels: int, rng: np.random.Generator,
                    train: dict | None = None) -> float:
    """ROI spacing of a training sample: the first click's field of view (35 %), else the spacing at
    which the object's extent, times a random factor, fills ``fill`` of the ROI. The factor is uniform
    in 0.85..1.4, or log-uniform in train.json's ``roi_scale_range`` when set: a low end below 1 lets
    the object overflow the ROI, as a refinement ROI sized from an under-segmented mask does."""
    lo, hi = settings["spacing_range_mm"]
    if rng.random() < 0.35:  # the first click's fixed field of view, objects small or cut off
        top = 2.0 if train_sampling("deepgrow", train)["domain_randomization"] else 1.5
        s = settings["first_click_spacing_mm"] * float(np.exp(rng.uniform(np.log(0.7), np.log(top))))
        return float(np.clip(s, lo, hi))
    scale = (train or {}).get("roi_scale_range")
    if scale is None:
        factor = rng.uniform(0.85, 1.4)
    else:
        a, b = (float(v) for v in scale)
        factor = float(np.exp(rng.uniform(np.log(a), np.log(b))))
    return object_spacing(extent_mm * factor, roi_voxels, settings["fill"], (lo, hi))


def _simulate_clicks(img: torch.Tensor, gt: np.ndarray, roi_label: np.ndarray, settings: dict, sigma,
                     rng: np.random.Generator, predict: Predictor | None, train: dict,
                     cut: bool = False) -> torch.Tensor:
    """Clicks and a current mask for one DeepGrow sample; returns the assembled input."""
    fg: list = []
    bg: list = []

    def add(click):
        (fg if click[1] else bg).append(click[0])

    # From scratch: a first click, then possibly the network's own predictions. With domain randomisation,
    # objects cut by the ROI or by the scan's field of view (large organs, thin slabs) start from scratch
    # more often: the first click is where they fail.
    p_scratch = 0.4
    if train_sampling("deepgrow", train)["domain_randomization"] and (cut or _touches_border(gt)):
        p_scratch = 0.65
    if rng.random() < p_scratch:
        prev = np.zeros_like(gt)
        add(random_click(prev, gt, rng, p_deepest=0.6))
        sampling = train_sampling("deepgrow", train)
        if predict is not None and rng.random() < sampling["p_model_in_loop"]:
            for _ in range(int(rng.integers(1, sampling["max_loop_clicks"] + 1))):
                pred = predict(interactive_input(img, fg, bg, prev, sigma)) > settings["threshold"]
                click = random_click(pred, gt, rng, p_deepest=0.6)
                if click is None:
                    break
                prev = pred.astype(np.uint8)
                add(click)
    else:
        prev, fg, bg = _refine_clicks(gt, roi_label, rng)
    return interactive_input(img, fg, bg, prev, sigma)


def _refine_clicks(gt: np.ndarray, roi_label: np.ndarray, rng: np.random.Generator):
    """An imperfect current mask (:func:`corrupt_mask`) with a few earlier clicks it agrees with and one
    or two new ones on its errors: ``(mask, fg, bg)``."""
    fg: list = []
    bg: list = []
    prev = corrupt_mask(gt, roi_label, rng)
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < 0.6:
            p = _random_inside(gt.astype(bool) & prev.astype(bool), rng)
            if p is not None:
                fg.append(p)
        else:
            ring = ndimage.binary_dilation(gt.astype(bool), iterations=4) & ~gt.astype(bool) & ~prev.astype(bool)
            p = _random_inside(ring, rng)
            if p is not None:
                bg.append(p)
    work = prev.copy()
    for _ in range(int(rng.integers(1, 3))):
        click = random_click(work, gt, rng, p_deepest=0.5)
        if click is None:
            break
        (fg if click[1] else bg).append(click[0])
        _fill_ball(work, gt, click[0][::-1], 4)
    if not fg and not bg:
        click = random_click(np.zeros_like(gt), gt, rng)
        (fg if click[1] else bg).append(click[0])
    return prev, fg, bg


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
    img = _augment(sample_roi(volume.image, sp, roi), roi_label, roi.spacing, rng, randomize)
    sigma = deepgrow_sigma(settings, roi.spacing)
    x = _simulate_clicks(img, gt, roi_label, settings, sigma, rng, predict, train, cut)
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
    img = _augment(sample_roi(volume.image, sp, roi), roi_label, roi.spacing, rng, randomize)
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
        prev, fg, bg = _refine_clicks(gt, roi_label, rng)
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
