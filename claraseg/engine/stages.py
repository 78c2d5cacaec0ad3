"""The stages of a click that follow the network's result: the DEXTR3D shape re-fit of a DeepGrow 3D
result and the boundary refinement at the image's resolution. The session runs them on its objects
(:class:`~claraseg.engine.session.LocalSession`) and the bundles' ``inference.json`` runs them on a
file (:mod:`claraseg.models.transforms`): the same functions, so both give the same mask."""

from __future__ import annotations

import numpy as np

from claraseg.engine.boundary import refine_boundary
from claraseg.engine.masks import BoxMask
from claraseg.engine.profile import stage
from claraseg.engine.runners import Volume, dextr_roi, honour_all_clicks, refit_with_dextr
from claraseg.guidance.roi import object_spacing


def shape_refit(net, settings: dict, refit_settings: dict, vol: Volume, mask: BoxMask, fg: np.ndarray,
                bg: np.ndarray, new_clicks: tuple[np.ndarray, np.ndarray], device: str) -> BoxMask | None:
    """The DeepGrow 3D bundle's shape re-fit (``settings``) by a DEXTR3D network ``net`` (its bundle's
    ``refit_settings``) on the extreme points of the click's result ``mask``, or None when it is refused
    (see :func:`~claraseg.engine.runners.refit_with_dextr`). ``shape_refit_passes`` (default 1) re-fits
    the re-fit again, from its own extreme points and with it as the current mask, until a pass is
    refused or changes nothing; ``shape_refit_tta_flips`` sets the test-time flips of the passes before the
    last (the last runs with the DEXTR3D bundle's own); ``shape_refit_threshold`` cuts every pass's result
    (default: the DEXTR3D bundle's threshold); ``shape_refit_contradiction`` says what a pass that contradicts
    a click becomes (refused, honoured or merged). Clicks are honoured on the last accepted pass."""
    passes = int(settings.get("shape_refit_passes", 1))
    # The re-fit's result may be cut at its own threshold (``shape_refit_threshold``), and the passes before
    # the last may run with fewer test-time flips (they only set the next box and mask).
    last = {**refit_settings, "threshold": settings["shape_refit_threshold"]} if "shape_refit_threshold" in settings \
        else refit_settings
    early = {**last, "tta_flips": settings["shape_refit_tta_flips"]} if "shape_refit_tta_flips" in settings else last
    gate = float(settings.get("shape_refit_min_agreement", 0.5))
    found = None
    for n in range(passes):
        # Each further pass re-fits the previous one (its box is taken from a better estimate).
        again = refit_with_dextr(net, last if n == passes - 1 else early, vol,
                                 mask if found is None else BoxMask(mask.size, *found), fg, bg, device, gate,
                                 settings.get("shape_refit_contradiction", "refuse"))
        if again is None:
            break
        converged = found is not None and np.array_equal(again[0], found[0]) and np.array_equal(again[1], found[1])
        found = again
        if converged:
            break
    if found is None:
        return None
    start, crop = found  # a fresh array of the last pass: the clicks are honoured on it in place
    with stage("honour"):
        honour_all_clicks(crop, start, fg, bg, new_clicks, float(settings.get("click_radius_mm", 0.0)), vol.spacing)
        return BoxMask(mask.size, start, crop)


def boundary_grid(settings: dict, mask: BoxMask, spacing, refit_settings: dict | None = None) -> list[float]:
    """The grid (mm ``[i, j, k]``) a DeepGrow 3D result of ``mask``'s size was made on: that of the DEXTR3D
    re-fit of its box (``refit_settings``, the ``shape_refit_model``'s), or without one the grid DeepGrow 3D
    refines an object of that size on."""
    box = np.stack([mask.start, mask.stop - 1]).astype(np.float64)
    if refit_settings is not None:
        return list(dextr_roi(refit_settings, box, spacing).spacing)
    extent = float(((box[1] - box[0] + 1) * np.asarray(spacing)).max())
    return [object_spacing(extent, int(settings["roi_size"][0]), float(settings.get("correction_fill", settings["fill"])),
                           settings["spacing_range_mm"])] * 3


def refine_mask_boundary(settings: dict, voxels: np.ndarray, spacing, mask: BoxMask, roi_spacing, fg: np.ndarray,
                         bg: np.ndarray) -> BoxMask:
    """``mask`` with its boundary re-decided at the image's resolution when the bundle's ``boundary_refine``
    setting asks for it (:func:`~claraseg.engine.boundary.refine_boundary`; keys ``band``, ``tau``, ``ring``,
    ``bins``; ``{}`` asks for the defaults); every click keeps its answer. ``roi_spacing`` is the grid the
    mask was made on (:func:`boundary_grid` for a DeepGrow 3D result)."""
    spec = settings.get("boundary_refine")
    if spec is None or mask.is_empty:
        return mask
    with stage("boundary"):
        return refine_boundary(voxels, spacing, mask, roi_spacing, fg, bg,
                               **{k: spec[k] for k in ("band", "tau", "ring", "bins") if k in spec})
