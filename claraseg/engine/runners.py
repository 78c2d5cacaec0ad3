"""Inference of each model kind on a prepared session volume: choose the ROI, resample, encode the
guidance exactly as in training (:mod:`claraseg.models.inputs`), run the network and map the
probabilities back onto the session grid.

A runner returns ``(start, crop)``: the session-grid box it decided, and the new 0/1 mask inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from claraseg.engine.masks import BoxMask
from claraseg.engine.onednn import onednn_network
from claraseg.engine.profile import count, enabled, stage
from claraseg.guidance import (
    Roi,
    box_roi,
    extreme_points,
    object_spacing,
    sample_from_roi,
    sample_roi,
    square_roi,
)
from claraseg.guidance.roi import slice_axes
from claraseg.models.inputs import (
    deepgrow_sigma,
    dextr_input,
    dextr_margin,
    dextr_takes_clicks,
    interactive_input,
    network_input,
)


@dataclass
class Volume:
    """What the runners need of a session image: voxels (compact raw dtype), spacing and the intensity
    transform of the model's spec (applied to each resampled box)."""

    array: object  # numpy [k, j, i] or torch tensor
    spacing: np.ndarray
    normalise: Callable[[torch.Tensor], torch.Tensor]

    @property
    def size(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return (i, j, k)


def flip_sets(ndim: int, count: int) -> list[tuple[int, ...]]:
    """The first ``count`` (at least 1) of the 2**ndim sets of spatial axes (negative, of a batched
    tensor) to flip for test-time augmentation; the empty set (no flip) first."""
    from itertools import combinations

    axes = [-(d + 1) for d in range(ndim)]
    sets = [c for r in range(ndim + 1) for c in combinations(axes, r)]
    return sets[:max(1, min(int(count), len(sets)))]


def forward(net, x: torch.Tensor, kind: str, device: str, tta: int = 1) -> torch.Tensor:
    """Sigmoid probabilities ``[k, j, i]`` (2D: ``[1, j, i]``) of an input ``[C, k, j, i]``; mixed
    precision on CUDA, float32 on CPU (deterministic run to run). ``tta`` > 1 averages the
    probabilities over that many flips of the input (test-time augmentation; the models are trained
    with random flips), one batch. A torch network on CPU runs its convolutions on oneDNN for a batch
    of one too (:func:`~claraseg.engine.onednn.onednn_network`); any other ``net`` (a runtime object) is called
    as it is."""
    if device == "cpu":
        net = onednn_network(net)
    with stage("tta"):
        inp = network_input(x, kind).to(device)
        flips = flip_sets(inp.ndim - 2, tta)
        batch = torch.cat([inp.flip(f) if f else inp for f in flips]) if len(flips) > 1 else inp
    count("forwards")
    count("forward_inputs", len(flips))
    with stage("forward"), torch.no_grad(), torch.autocast("cuda", enabled=device.startswith("cuda")):
        probs = torch.sigmoid(net(batch).float())
        if device.startswith("cuda") and enabled():
            torch.cuda.synchronize()
    with stage("tta"):
        if len(flips) > 1:
            probs = torch.stack([p.flip(f) if f else p for p, f in zip(probs[:, None], flips)]).mean(dim=0)
        out = probs[0, 0].cpu()
    return out[None] if kind == "deepgrow2d" else out


def _roi_mask_extent(pred: np.ndarray, roi: Roi) -> tuple[float, np.ndarray, bool] | None:
    """(largest extent in mm, centre in ROI voxels [i, j, k], touches the ROI border) of a 0/1 ROI mask."""
    nz = np.argwhere(pred)
    if len(nz) == 0:
        return None
    lo, hi = nz.min(axis=0)[::-1], nz.max(axis=0)[::-1]
    size = np.asarray(roi.size)
    flat = size > 1
    extent = float(((hi - lo + 1) * roi.spacing)[flat].max())
    touches = bool(np.any((lo[flat] == 0) | (hi[flat] == size[flat] - 1)))
    return extent, (lo + hi) / 2.0, touches


def _paste_roi(prob: torch.Tensor, roi: Roi, vol: Volume, threshold: float, mask=None, mask_roi=None):
    """The thresholded ``prob`` resampled onto the source voxels the ROI covers: ``(start, crop)``.

    With the object's current ``mask`` (a :class:`~claraseg.engine.masks.BoxMask`) and ``mask_roi`` (that
    mask as the network saw it, on the ROI grid), only the result's *changes* are applied: where the
    result agrees with the ROI-resolution mask the source-resolution mask is kept. A ROI coarser than the
    image then no longer re-draws, and thins, the parts of the object a click did not change."""
    start, stop = roi.covered_box(vol.spacing, vol.size)
    if np.any(stop <= start):
        return start, np.zeros((0, 0, 0), np.uint8)
    back = sample_from_roi(prob, roi, vol.spacing, start, stop).numpy() > threshold
    if mask is not None and mask_roi is not None and not mask.is_empty:
        seen = sample_from_roi(torch.as_tensor(mask_roi, dtype=torch.float32), roi, vol.spacing, start, stop)
        back = np.where(back != (seen.numpy() > 0.5), back, mask.region(start, stop) > 0)
    return start, back.view(np.uint8)  # the booleans' own bytes, 0/1


def run_deepgrow(net, kind: str, settings: dict, vol: Volume, mask, fg: np.ndarray, bg: np.ndarray,
                 device: str, slice_axis: int | None = None, slice_index: int | None = None,
                 new_clicks: tuple[np.ndarray, np.ndarray] | None = None, local_rel: float = 0.0):
    """DeepGrow 3D (or 2D on the slice ``slice_index`` normal to ``slice_axis``).

    ``mask`` is the object's current mask (:class:`~claraseg.engine.masks.BoxMask`); ``fg``/``bg`` all
    the object's clicks (N, 3) ``[i, j, k]`` (2D: those on the slice). The ROI covers the current mask
    and the clicks at the spacing that makes them fill ``fill`` of it; the first click on an empty
    object uses ``first_click_spacing_mm`` and, when the result is cut off by the ROI, runs again with a
    larger field of view (``first_click_grow_passes`` times at most).

    ``local_rel`` > 0 (3D, a mask the object already has) keeps the result's changes to the mask within
    that fraction of the mask's largest extent around the new clicks (at least two voxels): a click
    corrects a good mask (a DEXTR3D result) where it was placed instead of re-segmenting all of it.
    """
    sp = vol.spacing
    size = tuple(int(v) for v in settings["roi_size"])
    fill, srange = float(settings["fill"]), settings["spacing_range_mm"]
    two_d = kind == "deepgrow2d"
    axes = slice_axes(slice_axis) if two_d else np.eye(3)
    plane = [a for a in range(3) if a != slice_axis] if two_d else [0, 1, 2]
    clicks = np.concatenate([fg, bg]).astype(np.float64)
    if two_d:
        box_lo, box_hi = _mask_box(mask, slice_axis, slice_index)
        has_mask = box_lo is not None
    else:
        has_mask = not mask.is_empty
        box_lo, box_hi = (mask.start, mask.stop - 1) if has_mask else (None, None)
    pts = [clicks]
    if has_mask:
        pts.append(np.array([box_lo, box_hi], dtype=np.float64))
    allp = np.concatenate(pts)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    extent = float(((hi - lo + 1) * sp)[plane].max())
    first = not has_mask and len(bg) == 0 and len(fg) <= 1
    # Refinement: the current mask and clicks fill only ``correction_fill`` of the ROI, so the object can grow.
    correction_fill = float(settings.get("correction_fill", fill))
    s = float(settings["first_click_spacing_mm"]) if first else object_spacing(extent, size[0], correction_fill, srange)
    centre = (lo + hi) / 2.0

    keep = bool(settings.get("keep_clicked_components", False))

    def run_at(spacing: float, centre_ijk: np.ndarray, current=None):
        spv = np.array([spacing, spacing, sp[slice_axis]]) if two_d else np.array([spacing] * 3)
        c = centre_ijk.copy()
        if two_d:
            c[slice_axis] = slice_index
        roi = square_roi(c, sp, spv, size, axes)
        with stage("sample"):
            img = sample_roi(vol.array, sp, roi, transform=vol.normalise)
            current = mask if current is None and has_mask else current
            m = sample_roi(current, sp, roi, mode="nearest") if current is not None else torch.zeros(img.shape)
        with stage("encode"):
            fg_roi = roi.index_to_roi(fg, sp) if len(fg) else np.zeros((0, 3))
            x = interactive_input(img, fg_roi, roi.index_to_roi(bg, sp) if len(bg) else [], m,
                                  deepgrow_sigma(settings, roi.spacing))
        prob = forward(net, x, kind, device, int(settings.get("tta_flips", 1)))
        if keep:
            with stage("keep_components"):
                prob = keep_clicked_components(prob, fg_roi, m.numpy(), settings["threshold"])
        return roi, prob, m

    roi, prob, m = run_at(s, centre)
    # A first result cut off by the ROI runs again with a larger field of view: the same click at 1.8x
    # the spacing ("wider"), or ("from_result") with the cut result as the current mask, in an ROI centred
    # on it and sized from it as for a correction click (at least 1.8x the spacing).
    grow = settings.get("first_click_grow", "wider")
    for _ in range(int(settings.get("first_click_grow_passes", 1)) if first else 0):
        with stage("grow_check"):
            info = _roi_mask_extent(prob.numpy() > settings["threshold"], roi)
        if info is None or not info[2] or s >= srange[1]:
            break
        if grow == "from_result":
            with stage("paste"):
                start, crop = _paste_roi(prob, roi, vol, settings["threshold"])
                current = BoxMask(vol.size, start, crop) if crop.size else None
            if current is None or current.is_empty:
                break
            box = np.concatenate([clicks, np.array([current.start, current.stop - 1], dtype=np.float64)])
            b_lo, b_hi = box.min(axis=0), box.max(axis=0)
            ext = float(((b_hi - b_lo + 1) * sp)[plane].max())
            s = min(max(object_spacing(ext, size[0], correction_fill, srange), s * 1.8), srange[1])
            centre = (b_lo + b_hi) / 2.0
            roi, prob, m = run_at(s, centre, current)
        else:
            s = min(s * 1.8, srange[1])
            roi, prob, m = run_at(s, centre)
    detail = bool(settings.get("keep_mask_detail", False)) and has_mask and not two_d
    with stage("paste"):
        start, crop = _paste_roi(prob, roi, vol, settings["threshold"], *((mask, m) if detail else ()))
    if local_rel > 0 and not two_d and has_mask and new_clicks is not None and crop.size:
        with stage("keep_near"):
            crop = keep_changes_near(crop, start, mask, np.concatenate([np.reshape(new_clicks[0], (-1, 3)),
                                                                        np.reshape(new_clicks[1], (-1, 3))]),
                                     local_rel, sp)
    if new_clicks is not None and crop.size:
        with stage("honour"):
            honour_all_clicks(crop, start, fg, bg, new_clicks, float(settings.get("click_radius_mm", 0.0)), sp)
    return start, crop


def honour_all_clicks(crop: np.ndarray, start, fg: np.ndarray, bg: np.ndarray,
                      new_clicks: tuple[np.ndarray, np.ndarray], radius_mm: float, spacing) -> None:
    """Every click of the object (``fg``/``bg``, the ones just placed last in each) holds in ``crop``;
    the new clicks are applied last, so they win where they meet an older one. No-op for radius 0."""
    if radius_mm <= 0:
        return
    n_fg, n_bg = len(new_clicks[0]), len(new_clicks[1])
    honour_clicks(crop, start, fg[:len(fg) - n_fg], bg[:len(bg) - n_bg], radius_mm, spacing)
    honour_clicks(crop, start, np.asarray(new_clicks[0]), np.asarray(new_clicks[1]), radius_mm, spacing)


def keep_changes_near(crop: np.ndarray, start, mask, clicks: np.ndarray, rel: float, spacing) -> np.ndarray:
    """``crop`` (the new result ``[k, j, i]`` in the box at ``start``) where it lies within ``rel`` x the
    current mask's largest extent (mm, at least two voxels) of a click, the current ``mask`` elsewhere."""
    spacing = np.asarray(spacing, np.float64)
    start = np.asarray(start, np.int64)
    extent = float(((mask.stop - mask.start) * spacing).max())
    radius = max(rel * extent, 2.0 * float(spacing.max()))
    old = mask.region(start, start + np.asarray(crop.shape[::-1], np.int64))
    near = np.zeros(crop.shape, bool)
    kk, jj, ii = np.ogrid[:crop.shape[0], :crop.shape[1], :crop.shape[2]]
    for p in np.asarray(clicks, np.float64).reshape(-1, 3):
        c = p - start
        near |= (((ii - c[0]) * spacing[0]) ** 2 + ((jj - c[1]) * spacing[1]) ** 2
                 + ((kk - c[2]) * spacing[2]) ** 2) <= radius ** 2
    return np.where(near, crop, old).astype(np.uint8)


def honour_clicks(crop: np.ndarray, start, fg: np.ndarray, bg: np.ndarray, radius_mm: float, spacing) -> None:
    """Make the result agree with clicks: the voxels within ``radius_mm`` of a foreground click become 1,
    of a background click 0 (in place, inside the crop ``[k, j, i]``; clicks outside it change nothing)."""
    start = np.asarray(start, np.int64)
    shape = np.asarray(crop.shape[::-1])
    r = np.floor(radius_mm / np.asarray(spacing, np.float64)).astype(np.int64)
    for points, value in ((fg, 1), (bg, 0)):
        for p in np.asarray(points, np.int64).reshape(-1, 3):
            c = p - start
            lo, hi = np.maximum(c - r, 0), np.minimum(c + r + 1, shape)
            if np.any(hi <= lo):
                continue
            grids = np.ogrid[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
            d2 = sum(((g - c[a]) * spacing[a]) ** 2 for g, a in zip(grids, (2, 1, 0)))
            region = crop[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
            region[d2 <= radius_mm ** 2] = value


def keep_clicked_components(prob: torch.Tensor, fg_roi: np.ndarray, mask_roi: np.ndarray,
                            threshold: float) -> torch.Tensor:
    """Zero the probability of connected components (26-connected, in the ROI) of the thresholded result
    that hold no foreground click - or, with no foreground click in the ROI, that do not touch the
    current mask. Stray blobs elsewhere in the ROI are the commonest failure of a click model."""
    from scipy import ndimage

    binary = prob.numpy() > threshold
    labels, n = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return prob
    shape = np.asarray(binary.shape[::-1])
    idx = np.clip(np.rint(np.asarray(fg_roi, dtype=np.float64).reshape(-1, 3)), 0, shape - 1).astype(int)
    inside = np.all((fg_roi >= -0.5) & (fg_roi <= shape - 0.5), axis=1) if len(fg_roi) else np.zeros(0, bool)
    keep = set(labels[idx[inside, 2], idx[inside, 1], idx[inside, 0]].tolist()) - {0}
    if not keep:
        keep = set(np.unique(labels[(mask_roi > 0) & binary]).tolist()) - {0}
    if not keep:
        return prob
    return prob * torch.from_numpy(np.isin(labels, sorted(keep)) | ~binary)


def _mask_box(mask, axis: int, index: int):
    """In-slice bounding box (inclusive, ``[i, j, k]``) of the mask on one slice, or (None, None)."""
    start = np.array(mask.start)
    stop = np.array(mask.stop)
    if mask.is_empty or not (start[axis] <= index < stop[axis]):
        return None, None
    s2, e2 = start.copy(), stop.copy()
    s2[axis], e2[axis] = index, index + 1
    cut = mask.region(s2, e2)
    nz = np.argwhere(cut)
    if len(nz) == 0:
        return None, None
    lo = nz.min(axis=0)[::-1] + s2
    hi = nz.max(axis=0)[::-1] + s2
    return lo.astype(np.float64), hi.astype(np.float64)


def dextr_roi(settings: dict, points: np.ndarray, spacing) -> Roi:
    """The ROI DEXTR3D works on for ``points`` (N, 3) ``[i, j, k]``: their box plus the bundle's margin,
    stretched onto ``roi_size``."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    margin = dextr_margin(settings, (points.max(axis=0) - points.min(axis=0)) * np.asarray(spacing))
    return box_roi(points.min(axis=0), points.max(axis=0), spacing, margin, tuple(int(v) for v in settings["roi_size"]))


def run_dextr(net, settings: dict, vol: Volume, points: np.ndarray, device: str,
              fg: np.ndarray | None = None, bg: np.ndarray | None = None, mask=None):
    """DEXTR3D: the points' box plus ``margin_mm`` stretched onto the ROI, points as a heat-map channel.

    A bundle that takes clicks (:func:`~claraseg.models.inputs.dextr_takes_clicks`) also reads the
    object's clicks ``fg``/``bg`` (N, 3) and its current ``mask`` (a
    :class:`~claraseg.engine.masks.BoxMask`); without them those channels are empty, as for a first
    segmentation from the points. A bundle that does not take clicks ignores them."""
    roi = dextr_roi(settings, points, vol.spacing)
    takes_clicks = dextr_takes_clicks(settings)
    with stage("sample"):
        img = sample_roi(vol.array, vol.spacing, roi, transform=vol.normalise)
        m = sample_roi(mask, vol.spacing, roi, mode="nearest") \
            if takes_clicks and mask is not None and not mask.is_empty else None
    with stage("encode"):
        sigma = settings["guidance"]["sigma_vox"]
        pts = roi.index_to_roi(points.astype(np.float64), vol.spacing)
        if takes_clicks:
            def to_roi(p):
                p = np.asarray(p if p is not None else np.zeros((0, 3)), np.float64).reshape(-1, 3)
                return roi.index_to_roi(p, vol.spacing) if len(p) else p

            x = dextr_input(img, pts, sigma, True, to_roi(fg), to_roi(bg), m)
        else:
            x = dextr_input(img, pts, sigma)
    prob = forward(net, x, "dextr3d", device, int(settings.get("tta_flips", 1)))
    detail = bool(settings.get("keep_mask_detail", False)) and m is not None
    with stage("paste"):
        return _paste_roi(prob, roi, vol, settings["threshold"], *((mask, m) if detail else ()))


def box_points(points: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """The points that set a DEXTR3D box: ``points`` themselves while every foreground click lies in
    their box, else the six extreme points of points and foreground clicks together (a click outside
    the box says the object reaches further)."""
    points = np.asarray(points, np.int64).reshape(-1, 3)
    fg = np.asarray(fg, np.int64).reshape(-1, 3)
    if not len(fg) or (np.all(fg >= points.min(axis=0)) and np.all(fg <= points.max(axis=0))):
        return points
    both = np.concatenate([points, fg])
    return np.asarray([both[f(both[:, a])] for a in range(3) for f in (np.argmin, np.argmax)], np.int64)


#: Smallest mask (voxels) whose extreme points are worth a re-fit.
REFIT_MIN_VOXELS = 20


def refit_with_dextr(net, settings: dict, vol: Volume, mask, fg: np.ndarray, bg: np.ndarray, device: str,
                     min_agreement: float, contradiction: str = "refuse"):
    """Shape re-fit of a DeepGrow 3D result: DEXTR3D run on the extreme points of ``mask`` (a
    :class:`~claraseg.engine.masks.BoxMask`). Returns ``(start, crop)`` of the whole new object, or None
    when the re-fit is refused: it agrees with ``mask`` by less than ``min_agreement`` Dice, or it
    contradicts a click (a foreground click outside it, a background click inside) and ``contradiction``
    is ``"refuse"``. With ``"honour"`` such a re-fit is kept (the caller honours the clicks on it); with
    ``"merge"`` the regions of its additions to or removals from ``mask`` that hold a contradicted click take ``mask``'s
    answer (:func:`keep_clicked_changes`), the rest stays the re-fit's."""
    if mask.is_empty or np.count_nonzero(mask.crop) < REFIT_MIN_VOXELS:
        return None
    with stage("extreme_points"):
        points = box_points(extreme_points(mask.crop) + mask.start, fg).astype(np.float64)
    start, crop = run_dextr(net, settings, vol, points, device, fg, bg, mask)
    if not crop.size or not crop.any():
        return None
    with stage("gate"):
        return _gate_refit(start, crop, mask, fg, bg, min_agreement, contradiction)


def _gate_refit(start, crop, mask, fg, bg, min_agreement: float, contradiction: str):
    """The tail of :func:`refit_with_dextr`: the re-fit ``(start, crop)`` checked against the clicks and
    against ``mask`` (Dice agreement), merged or refused as its arguments say."""
    start = np.asarray(start, np.int64)
    shape = np.asarray(crop.shape[::-1], np.int64)

    def inside(p) -> bool:
        c = np.asarray(p, np.int64) - start
        return bool(np.all(c >= 0) and np.all(c < shape) and crop[c[2], c[1], c[0]])

    wrong = [p for p in np.reshape(fg, (-1, 3)) if not inside(p)] + [p for p in np.reshape(bg, (-1, 3)) if inside(p)]
    if wrong and contradiction == "refuse":
        return None
    if wrong and contradiction == "merge":
        merged = keep_clicked_changes(BoxMask(mask.size, start, crop), mask, np.asarray(wrong))
        start, crop = merged.start, merged.crop
        shape = np.asarray(crop.shape[::-1], np.int64)
    lo, hi = np.minimum(start, mask.start), np.maximum(start + shape, mask.stop)
    old = mask.region(lo, hi).astype(bool)
    new = np.zeros(old.shape, bool)
    new[tuple(slice(a, a + n) for a, n in zip((start - lo)[::-1], crop.shape))] = crop > 0
    agreement = 2.0 * np.count_nonzero(old & new) / max(1, np.count_nonzero(old) + np.count_nonzero(new))
    if agreement < min_agreement:
        return None
    return start, crop


def keep_clicked_changes(old, new, clicks: np.ndarray):
    """``old`` (a :class:`~claraseg.engine.masks.BoxMask`) except where ``new`` changes it in a way one of
    ``clicks`` (N, 3) ``[i, j, k]`` asks for: the connected region (26-connected) of ``new``'s additions,
    or of its removals, that holds a click takes ``new``'s answer. Additions and removals are separate
    regions, so a click that takes back what ``old`` added near it does not also undo what ``old``
    removed elsewhere along the same boundary. Returns a BoxMask."""
    from scipy import ndimage

    clicks = np.asarray(clicks, np.int64).reshape(-1, 3)
    if old.is_empty or new.is_empty or not len(clicks):
        return new
    lo = np.minimum(old.start, new.start)
    hi = np.maximum(old.stop, new.stop)
    a, b = old.region(lo, hi) > 0, new.region(lo, hi) > 0
    c = clicks - lo
    c = c[np.all((c >= 0) & (c < hi - lo), axis=1)]
    out = a.copy()
    for change in (b & ~a, a & ~b):
        labels, n = ndimage.label(change, structure=np.ones((3, 3, 3), bool))
        hit = set(labels[c[:, 2], c[:, 1], c[:, 0]].tolist()) - {0} if n else set()
        if hit:
            taken = np.isin(labels, sorted(hit))
            out[taken] = b[taken]
    return BoxMask(old.size, lo, out.astype(np.uint8))
