"""Simulated clicks and current masks for training samples: a first click (with the network's own
predictions in the loop), or an imperfect current mask with earlier clicks and new clicks on its errors.
Clicks are drawn by :func:`claraseg.guidance.random_click` (the ANCHORS.md protocol plus random variants)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from claraseg.guidance import random_click
from claraseg.models.inputs import Predictor, interactive_input
from claraseg.models.train_config import train_sampling


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


def local_errors(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A current mask that is right except in one to four patches of the boundary, each grown or shrunk by
    one or two voxels within a ball of 3-10 voxels around a boundary voxel: the errors left after a few
    clicks, which a click should fix where it is and nowhere else. ``[k, j, i]``."""
    g = _squeeze(gt).astype(bool)
    st = ndimage.generate_binary_structure(g.ndim, 1)
    grown = [ndimage.binary_dilation(g, st, iterations=k) for k in (1, 2)]
    shrunk = [ndimage.binary_erosion(g, st, iterations=k) for k in (1, 2)]
    edge = np.argwhere(grown[0] & ~shrunk[0])
    m = g.copy()
    if len(edge):
        grid = np.indices(g.shape).reshape(g.ndim, -1).T
        for _ in range(int(rng.integers(1, 5))):
            p = edge[rng.integers(len(edge))]
            r = rng.uniform(3.0, 10.0)
            ball = (((grid - p) ** 2).sum(axis=1) <= r * r).reshape(g.shape)
            changed = (grown if rng.random() < 0.5 else shrunk)[int(rng.integers(2))]
            m[ball] = changed[ball]
    if np.array_equal(m, g):
        m = grown[0]
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


def _touches_border(gt: np.ndarray) -> bool:
    """Whether a ROI target reaches the ROI's faces (the object is cut by the ROI)."""
    g = _squeeze(gt).astype(bool)
    return bool(any(np.take(g, i, axis=a).any() for a in range(g.ndim) for i in (0, -1)))


def simulate_clicks(img: torch.Tensor, gt: np.ndarray, roi_label: np.ndarray, settings: dict, sigma,
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
    sampling = train_sampling("deepgrow", train)
    p_scratch = float(sampling["p_from_scratch"])
    if sampling["domain_randomization"] and (cut or _touches_border(gt)):
        p_scratch = float(sampling["p_from_scratch_cut"])
    if rng.random() < p_scratch:
        prev = np.zeros_like(gt)
        add(random_click(prev, gt, rng, p_deepest=0.6))
        if predict is not None and rng.random() < sampling["p_model_in_loop"]:
            for _ in range(int(rng.integers(1, sampling["max_loop_clicks"] + 1))):
                pred = predict(interactive_input(img, fg, bg, prev, sigma)) > settings["threshold"]
                click = random_click(pred, gt, rng, p_deepest=0.6)
                if click is None:
                    break
                prev = pred.astype(np.uint8)
                add(click)
    else:
        prev, fg, bg = refine_clicks(gt, roi_label, rng, float(sampling["p_local_errors"]))
    return interactive_input(img, fg, bg, prev, sigma)


def refine_clicks(gt: np.ndarray, roi_label: np.ndarray, rng: np.random.Generator, p_local: float = 0.0):
    """An imperfect current mask (:func:`corrupt_mask`, or with probability ``p_local`` one wrong only in
    patches of its boundary, :func:`local_errors`) with a few earlier clicks it agrees with and one or two
    new ones on its errors: ``(mask, fg, bg)``."""
    fg: list = []
    bg: list = []
    prev = local_errors(gt, rng) if p_local > 0 and rng.random() < p_local else corrupt_mask(gt, roi_label, rng)
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
