"""MONAI dictionary transforms that run an interactive bundle on a file, as its ``configs/inference.json``
declares: ``python -m monai.bundle run --config_file configs/inference.json --image ct.nii.gz
--foreground '[[60, 50, 50]]' --output mask.nii.gz`` (from the bundle folder).

Each transform calls the function the engine's session calls for the same stage, so a bundle run from its
config gives the mask ``claraseg predict`` and the annotation server give for the same clicks:

- :class:`LoadImaged` / :class:`LoadMaskd`: claraseg's reader (``[k, j, i]`` voxels, LPS geometry);
- :class:`Clicksd`: clicks or extreme points as voxel indices ``[i, j, k]`` inside the image;
- :class:`IntensityVolumed`: the ``intensity`` spec of the bundle's ``claraseg`` metadata (CT window, MR
  percentiles), applied to every resampled ROI as the engine does;
- :class:`DeepGrowd` / :class:`Dextrd`: the ROI, the guidance channels (Gaussian heat maps of the clicks or
  extreme points, the current mask), the network, sigmoid and threshold, pasted back onto the image grid
  (:func:`claraseg.engine.runners.run_deepgrow` / :func:`~claraseg.engine.runners.run_dextr`);
- :class:`ShapeRefitd` / :class:`BoundaryRefined`: the stages after the network
  (:mod:`claraseg.engine.stages`);
- :class:`SaveMaskd`: the 0/1 mask on the image's grid, written atomically.

The data dictionary carries claraseg objects between them: ``image`` an :class:`~claraseg.io.Image`,
``volume`` the engine's :class:`~claraseg.engine.runners.Volume`, ``mask``/``pred`` a
:class:`~claraseg.engine.masks.BoxMask`.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import MapTransform

from claraseg.engine.masks import BoxMask
from claraseg.engine.runners import Volume, dextr_roi, run_deepgrow, run_dextr
from claraseg.engine.session import compact_array, normaliser
from claraseg.engine.stages import boundary_grid, refine_mask_boundary, shape_refit
from claraseg.errors import InvalidPointsError, ModelError
from claraseg.io import Image, LabelInfo, check_points_inside, read_image, write_image
from claraseg.models.bundle import read_bundle
from claraseg.models.preprocess import guess_modality, intensity_params

log = logging.getLogger("claraseg.transforms")

def _device(device: Any) -> str:
    return str(device) if device is not None else "cpu"


def engine_volume(image: Image, voxels: np.ndarray, intensity: dict, modality: str | None = None) -> Volume:
    """The image as the engine's runners read it: the session's compact voxels, and the normalisation of
    ``intensity`` for the image's modality applied to each resampled ROI."""
    params = intensity_params(voxels, modality or guess_modality(image), intensity)
    return Volume(voxels, image.spacing, normaliser(params))


def engine_network(bundle_dir: str | Path, device: Any = "cpu"):
    """The bundle's network as the engine's registry loads it: the weights in ``network_def`` (eval mode),
    or the runtime object the bundle's ``runtime`` setting selects."""
    from claraseg.runtimes.nets import runtime_net

    bundle = read_bundle(bundle_dir)
    return runtime_net(bundle, bundle.load_network(_device(device)), _device(device))


def _refit_bundle(settings: dict, models_dir: str | Path | None):
    """The DEXTR3D bundle a DeepGrow 3D bundle re-fits with (``shape_refit_model``, a folder beside it),
    or None when it names none or that folder holds no DEXTR3D bundle."""
    name = settings.get("shape_refit_model")
    if not name or models_dir is None or not (Path(models_dir) / name).is_dir():
        return None
    bundle = read_bundle(Path(models_dir) / name)
    return bundle if bundle.kind == "dextr3d" else None


class LoadImaged(MapTransform):
    """Read the image file (NIfTI, NRRD, DICOM folder) at ``keys`` into a claraseg :class:`~claraseg.io.Image`."""

    def __init__(self, keys: str | Sequence[str] = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if not isinstance(d[key], Image):
                d[key] = read_image(d[key])
        return d


class LoadMaskd(MapTransform):
    """The object's current mask (a label file on the image's grid; voxels > 0 are the object) as a
    :class:`~claraseg.engine.masks.BoxMask`; empty when the key is missing or holds an empty path."""

    def __init__(self, keys: str | Sequence[str] = "mask", reference_key: str = "image"):
        super().__init__(keys, allow_missing_keys=True)
        self.reference_key = reference_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image: Image = d[self.reference_key]
        for key in self.keys:
            value = d.get(key)
            if isinstance(value, BoxMask):
                continue
            if value is None or (isinstance(value, str) and not value):
                d[key] = BoxMask(image.size_ijk)
                continue
            label = value if isinstance(value, Image) else read_image(value, label=True)
            image.check_same_grid(label)
            d[key] = BoxMask(image.size_ijk, np.zeros(3, np.int64), (np.asarray(label.array) > 0).astype(np.uint8))
        return d


class Clicksd(MapTransform):
    """Points at ``keys`` (lists of voxel indices ``[i, j, k]``) as int64 ``(N, 3)`` arrays, checked to lie
    inside the image at ``reference_key``; together at least ``min_points``."""

    def __init__(self, keys: str | Sequence[str] = ("foreground", "background"), reference_key: str = "image",
                 min_points: int = 1):
        super().__init__(keys, allow_missing_keys=True)
        self.reference_key = reference_key
        self.min_points = int(min_points)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        size = d[self.reference_key].size_ijk
        for key in self.keys:
            value = d.get(key)
            d[key] = check_points_inside(size, value if value is not None and len(value) else np.zeros((0, 3)),
                                         f"{key} point")
        total = sum(len(d[key]) for key in self.keys)
        if total < self.min_points:
            raise InvalidPointsError(f"{total} point(s) given in {list(self.keys)}; at least {self.min_points} needed "
                                     "(voxel indices [i, j, k])")
        return d


class IntensityVolumed(MapTransform):
    """The image at ``keys`` prepared as the engine prepares a session image: compact voxels (``voxels``)
    and the bundle's ``intensity`` normalisation (per modality: CT window or MR percentiles), which the
    runners apply to every resampled ROI (``volume``)."""

    def __init__(self, keys: str | Sequence[str] = "image", intensity: dict | None = None, modality: str | None = None,
                 volume_key: str = "volume", voxels_key: str = "voxels"):
        super().__init__(keys)
        if not isinstance(intensity, dict):
            raise ModelError("IntensityVolumed needs the bundle's intensity spec (@_meta_#claraseg#intensity)")
        self.intensity, self.modality = intensity, modality
        self.volume_key, self.voxels_key = volume_key, voxels_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image: Image = d[key]
            voxels = compact_array(image.array)
            d[self.voxels_key] = voxels
            d[self.volume_key] = engine_volume(image, voxels, self.intensity, self.modality)
        return d


class DeepGrowd(MapTransform):
    """DeepGrow 3D (or 2D on the clicks' slice normal to ``slice_axis``): the ROI around the clicks and the
    current mask (``roi_size``, ``first_click_spacing_mm``, ``fill``, ``correction_fill``), the channels
    image / foreground / background heat maps (``guidance.sigma_mm``) / current mask, the network with
    ``tta_flips`` flips, sigmoid, ``threshold``, pasted onto the current mask (``pred``)."""

    def __init__(self, network, settings: dict, kind: str = "deepgrow3d", device: Any = "cpu",
                 slice_axis: int | None = None, keys: str | Sequence[str] = ("foreground", "background"),
                 mask_key: str = "mask", volume_key: str = "volume", output_key: str = "pred"):
        super().__init__(keys)
        if kind not in ("deepgrow3d", "deepgrow2d"):
            raise ModelError(f"DeepGrowd runs deepgrow3d or deepgrow2d models, not {kind!r}")
        if kind == "deepgrow2d" and slice_axis not in (0, 1, 2):
            raise InvalidPointsError("a 2D model needs slice_axis = 0 (i), 1 (j) or 2 (k): the axis normal to the "
                                     f"slice clicked on (got {slice_axis!r})")
        self.network, self.settings, self.kind, self.device = network, settings, kind, _device(device)
        self.slice_axis = slice_axis if kind == "deepgrow2d" else None
        self.mask_key, self.volume_key, self.output_key = mask_key, volume_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        fg, bg = (np.asarray(d[k], np.int64).reshape(-1, 3) for k in self.keys)
        vol: Volume = d[self.volume_key]
        mask = d.get(self.mask_key)
        mask = mask if isinstance(mask, BoxMask) else BoxMask(vol.size)
        index = None
        if self.slice_axis is not None:
            values = np.unique(np.concatenate([fg, bg])[:, self.slice_axis])
            if len(values) != 1:
                raise InvalidPointsError(f"2D clicks must all lie on one slice: along axis {self.slice_axis} they "
                                         f"have indices {values.tolist()}")
            index = int(values[0])
        start, crop = run_deepgrow(self.network, self.kind, self.settings, vol, mask, fg, bg, self.device,
                                   self.slice_axis, index, (fg, bg))
        new = mask.copy()
        if crop.size:
            new.write(start, crop)
        d[self.output_key] = new
        return d


class Dextrd(MapTransform):
    """DEXTR3D from extreme points: their box plus ``margin_mm`` stretched onto ``roi_size``, the channels
    image / extreme-point heat map (``guidance.sigma_vox``) (and empty click channels and mask for a model
    that reads them), the network with ``tta_flips`` flips, sigmoid, ``threshold`` (``pred``)."""

    def __init__(self, network, settings: dict, device: Any = "cpu", keys: str | Sequence[str] = "points",
                 volume_key: str = "volume", output_key: str = "pred"):
        super().__init__(keys)
        self.network, self.settings, self.device = network, settings, _device(device)
        self.volume_key, self.output_key = volume_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        vol: Volume = d[self.volume_key]
        for key in self.key_iterator(d):
            start, crop = run_dextr(self.network, self.settings, vol, d[key], self.device)
            d[self.output_key] = BoxMask(vol.size, start, crop) if crop.size else BoxMask(vol.size)
        return d


class ShapeRefitd(MapTransform):
    """The DEXTR3D shape re-fit of a DeepGrow 3D result (``pred``) with the bundle ``shape_refit_model``
    names in ``models_dir`` (:func:`claraseg.engine.stages.shape_refit`); the result is kept when no such
    bundle is there or the re-fit is refused."""

    def __init__(self, settings: dict, models_dir: str | Path | None, device: Any = "cpu",
                 keys: str | Sequence[str] = "pred", clicks: Sequence[str] = ("foreground", "background"),
                 image_key: str = "image", voxels_key: str = "voxels"):
        super().__init__(keys)
        self.settings, self.device = settings, _device(device)
        self.clicks, self.image_key, self.voxels_key = tuple(clicks), image_key, voxels_key
        self.bundle = _refit_bundle(settings, models_dir)
        if settings.get("shape_refit_model") and self.bundle is None:
            log.warning("refit model %r is not in %s: the shape re-fit is skipped", settings["shape_refit_model"],
                        models_dir)
        self.network = engine_network(self.bundle.path, self.device) if self.bundle is not None else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.bundle is None:
            return d
        fg, bg = (np.asarray(d[k], np.int64).reshape(-1, 3) for k in self.clicks)
        vol = engine_volume(d[self.image_key], d[self.voxels_key], self.bundle.settings["intensity"])
        for key in self.key_iterator(d):
            found = shape_refit(self.network, self.settings, self.bundle.settings, vol, d[key], fg, bg, (fg, bg),
                                self.device)
            if found is not None:
                d[key] = found
        return d


class BoundaryRefined(MapTransform):
    """The result's (``pred``) boundary re-decided at the image's resolution when the bundle's
    ``boundary_refine`` asks for it (:func:`claraseg.engine.stages.refine_mask_boundary`); the clicks keep
    their answers. The grid the result was made on is that of the DEXTR3D box of ``points_key`` when given,
    else :func:`~claraseg.engine.stages.boundary_grid` (with the re-fit bundle in ``models_dir``)."""

    def __init__(self, settings: dict, models_dir: str | Path | None = None, keys: str | Sequence[str] = "pred",
                 clicks: Sequence[str] = ("foreground", "background"), points_key: str | None = None,
                 image_key: str = "image", voxels_key: str = "voxels"):
        super().__init__(keys)
        self.settings, self.clicks, self.points_key = settings, tuple(clicks), points_key
        self.image_key, self.voxels_key = image_key, voxels_key
        refit = _refit_bundle(settings, models_dir) if points_key is None else None
        self.refit_settings = refit.settings if refit is not None else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        spacing = d[self.image_key].spacing
        fg, bg = (np.asarray(d[k], np.int64).reshape(-1, 3) if k in d else np.zeros((0, 3), np.int64)
                  for k in self.clicks)
        for key in self.key_iterator(d):
            mask: BoxMask = d[key]
            if mask.is_empty:
                continue
            if self.points_key is not None:
                grid = dextr_roi(self.settings, d[self.points_key], spacing).spacing
            else:
                grid = boundary_grid(self.settings, mask, spacing, self.refit_settings)
            d[key] = refine_mask_boundary(self.settings, d[self.voxels_key], spacing, mask, grid, fg, bg)
        return d


class SaveMaskd(MapTransform):
    """Write the mask at ``keys`` as a 0/1 label map on the image's grid to ``output`` (any format
    claraseg writes: .nii.gz, .nrrd, .seg.nrrd), atomically; the path goes into ``<key>_path``."""

    def __init__(self, output: str | Path, keys: str | Sequence[str] = "pred", image_key: str = "image", name: str = "object"):
        super().__init__(keys)
        self.output, self.image_key, self.name = Path(output), image_key, name

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image: Image = d[self.image_key]
        for key in self.key_iterator(d):
            mask: BoxMask = d[key]
            full = np.zeros(image.array.shape, np.uint8)
            if not mask.is_empty:
                full[tuple(slice(a, b) for a, b in zip(mask.start[::-1], mask.stop[::-1]))] = mask.crop
            out = image.with_array(full, labels={1: LabelInfo(self.name)})
            out.metadata["is_label"] = True
            self.output.parent.mkdir(parents=True, exist_ok=True)
            d[f"{key}_path"] = write_image(out, self.output)
            log.info("wrote %s: %d voxels", self.output, int(full.sum()))
        return d
