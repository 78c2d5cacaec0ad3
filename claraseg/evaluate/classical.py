"""Classical seeded baselines behind the Backend interface, so the click protocol runs them unchanged.

What a user without AI would get from the same prompts:

- ``random_walker``: scikit-image's random walker. Foreground seeds are the object's foreground clicks
  (for extreme points: the segments from their centroid to each point, assumed inside as GrabCut
  assumes of a box's centre); background seeds are its background clicks, the border of a region of interest (the box
  around the foreground seeds plus a margin, ``margin_mm``; for extreme points a few voxels, since they
  already bound the object) and the voxels whose intensity is far from the clicked object's. Large
  regions are solved on a strided grid.
- ``region_growing``: SimpleITK's confidence-connected region growing from the foreground seeds inside
  the same region of interest; every background click inside the result tightens the intensity band
  until the click falls outside it.

Each interaction recomputes the object from all of its prompts (the methods have no memory).
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from claraseg.backend import ModelDescriptor, Point, check_object_state
from claraseg.errors import (
    InvalidImageError,
    InvalidPointsError,
    ModelError,
    SessionNotFoundError,
    UnknownModelError,
)
from claraseg.io import Image, MaskDelta, check_finite, check_points_inside

METHODS = ("random_walker", "region_growing")
#: Largest region (voxels) solved at full resolution; larger ones are strided to stay interactive.
MAX_ROI_VOXELS = 120_000
#: Voxels whose intensity lies this many robust spreads from the clicked object's become background seeds.
SEED_SIGMAS = 5.0


@dataclass
class _Prompts:
    extreme: list[list[int]] = field(default_factory=list)
    foreground: list[list[int]] = field(default_factory=list)
    background: list[list[int]] = field(default_factory=list)
    slice_axis: int | None = None


class ClassicalBackend:
    """A :class:`~claraseg.backend.Backend` whose "models" are classical seeded methods."""

    def __init__(self, method: str = "random_walker", margin_mm: float = 60.0, beta: float = 1000.0):
        if method not in METHODS:
            raise UnknownModelError(f"unknown classical method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.margin_mm = float(margin_mm)
        self.beta = float(beta)

    def models(self) -> list[ModelDescriptor]:
        return [ModelDescriptor(
            name=self.method, kind="deepgrow3d", min_points=1,
            description=f"classical baseline ({self.method}); also answers extreme points and 2D clicks",
        )]

    def open_session(self, image: Image) -> ClassicalSession:
        return ClassicalSession(self, image)

    def close(self) -> None:
        """Nothing to release: sessions hold their own arrays."""


class ClassicalSession:
    """A session of :class:`ClassicalBackend`: the image normalised once, prompts and masks per object."""

    def __init__(self, backend: ClassicalBackend, image: Image):
        check_finite(image)
        if min(image.size_ijk[:2]) < 2:
            raise InvalidImageError(f"the image is too small ({list(image.size_ijk)} voxels) for a seeded method")
        self._backend = backend
        self._image = image
        self._data = image.array.astype(np.float32)
        self._id = uuid.uuid4().hex
        self._masks: dict[str, np.ndarray] = {}
        self._prompts: dict[str, _Prompts] = {}
        self._history: dict[str, list[tuple[np.ndarray, _Prompts]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def id(self) -> str:
        return self._id

    @property
    def image_size(self) -> tuple[int, int, int]:
        return self._image.size_ijk

    # ----- prompts ---------------------------------------------------------------------------------
    def click(self, model: str, foreground: Sequence[Point] = (), background: Sequence[Point] = (),
              object_id: str = "1", slice_axis: int | None = None) -> MaskDelta:
        self._check(model)
        fg = check_points_inside(self.image_size, foreground, "click").tolist() if len(foreground) else []
        bg = check_points_inside(self.image_size, background, "click").tolist() if len(background) else []
        if not fg and not bg:
            raise InvalidPointsError("no clicks given: pass at least one foreground or background click")
        if slice_axis is not None:
            if slice_axis not in (0, 1, 2):
                raise InvalidPointsError(f"slice_axis must be 0 (i), 1 (j) or 2 (k), not {slice_axis}")
            if len({p[slice_axis] for p in fg + bg}) != 1:
                raise InvalidPointsError("2D clicks must all lie on one slice along the named axis")
        with self._lock:
            old = self._prompts.get(object_id, _Prompts())
            if slice_axis is not None and old.slice_axis is not None and old.slice_axis != slice_axis:
                old = _Prompts()
            prompts = _Prompts(list(old.extreme), old.foreground + fg, old.background + bg, slice_axis)
            return self._update(object_id, prompts)

    def extreme_points(self, model: str, points: Sequence[Point], object_id: str = "1") -> MaskDelta:
        self._check(model)
        pts = check_points_inside(self.image_size, points, "extreme point")
        if len(pts) < 6:
            raise InvalidPointsError(f"extreme points need at least 6 points (min and max along i, j, k); got {len(pts)}")
        with self._lock:
            return self._update(object_id, _Prompts(pts.tolist()))

    def auto_segment(self, model: str) -> MaskDelta:
        raise ModelError(f"the classical baseline {model!r} has no automatic segmentation; it needs clicks")

    def set_mask(self, object_id: str, mask: MaskDelta, points: Sequence[Point] = (),
                 foreground: Sequence[Point] = (), background: Sequence[Point] = ()) -> None:
        """Replace the object's mask; ``points``/``foreground``/``background`` become its prompts again
        (the next interaction recomputes the object from them plus its own), otherwise it has none."""
        self._check_open()
        pts, fg, bg = check_object_state(self.image_size, points, foreground, background)
        with self._lock:
            full = self._current(object_id).copy()
            mask.paste(full)
            self._push(object_id, full, _Prompts(pts, fg, bg))

    def undo(self, object_id: str = "1") -> MaskDelta:
        self._check_open()
        with self._lock:
            old = self._current(object_id)
            history = self._history.get(object_id, [])
            if history:
                mask, prompts = history.pop()
                self._masks[object_id], self._prompts[object_id] = mask, prompts
            else:
                self._masks.pop(object_id, None)
                self._prompts.pop(object_id, None)
            return MaskDelta.from_full(self._current(object_id), old)

    def clear(self, object_id: str = "1") -> MaskDelta:
        """Empty the object and forget its prompts; undo-able, as in the engine."""
        self._check_open()
        with self._lock:
            old = self._current(object_id)
            if object_id in self._masks:
                self._push(object_id, np.zeros_like(old), _Prompts())
            return MaskDelta.from_full(np.zeros_like(old), old)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._masks.clear()
            self._prompts.clear()
            self._history.clear()
            self._data = np.zeros((1, 1, 1), np.float32)

    # ----- internals -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SessionNotFoundError("the session is closed; open a new one")

    def _check(self, model: str) -> None:
        self._check_open()
        if model != self._backend.method:
            raise UnknownModelError(f"this baseline backend runs {self._backend.method!r}, not {model!r}")

    def _current(self, object_id: str) -> np.ndarray:
        mask = self._masks.get(object_id)
        return mask if mask is not None else np.zeros(self._data.shape, np.uint8)

    def _push(self, object_id: str, mask: np.ndarray, prompts: _Prompts) -> None:
        if object_id in self._masks:
            self._history.setdefault(object_id, []).append((self._masks[object_id], self._prompts[object_id]))
        self._masks[object_id] = mask
        self._prompts[object_id] = prompts

    def _update(self, object_id: str, prompts: _Prompts) -> MaskDelta:
        old = self._current(object_id)
        new = self._segment(prompts)
        self._push(object_id, new, prompts)
        return MaskDelta.from_full(new, old)

    def _segment(self, prompts: _Prompts) -> np.ndarray:
        """The object's mask ``[k, j, i]`` from all its prompts."""
        shape = self._data.shape
        size = np.asarray(shape[::-1])
        fg = np.asarray(_spokes(prompts.extreme) + prompts.foreground, dtype=np.int64).reshape(-1, 3)
        bg = np.asarray(prompts.background, dtype=np.int64).reshape(-1, 3)
        out = np.zeros(shape, np.uint8)
        if len(fg) == 0:
            return out  # only background clicks: nothing to grow from
        spacing = self._image.spacing
        margin = np.ceil(self._backend.margin_mm / spacing).astype(np.int64)
        lo, hi = fg.min(axis=0), fg.max(axis=0) + 1
        if prompts.extreme:
            ext = np.asarray(prompts.extreme)
            lo = np.minimum(lo, ext.min(axis=0) - 3)
            hi = np.maximum(hi, ext.max(axis=0) + 4)
            clicks = np.asarray(prompts.foreground, dtype=np.int64).reshape(-1, 3)
            if len(clicks):
                lo = np.minimum(lo, clicks.min(axis=0) - margin)
                hi = np.maximum(hi, clicks.max(axis=0) + 1 + margin)
        else:
            lo, hi = lo - margin, hi + margin
        if prompts.slice_axis is not None:
            a = prompts.slice_axis
            lo[a], hi[a] = fg[0, a], fg[0, a] + 1
        lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
        roi = tuple(slice(int(lo[d]), int(hi[d])) for d in (2, 1, 0))
        data = self._data[roi]
        seeds = np.zeros(data.shape, np.uint8)
        _border(seeds, prompts.slice_axis, lo, hi, size)
        clicks_bg = [p[::-1] - lo[::-1] for p in bg if np.all(p >= lo) and np.all(p < hi)]
        for p in clicks_bg:
            seeds[tuple(p)] = 2
        for p in fg:
            seeds[tuple(p[::-1] - lo[::-1])] = 1
        if self._backend.method == "random_walker":
            inside = _random_walker(data, seeds, spacing[::-1], self._backend.beta)[
                :data.shape[0], :data.shape[1], :data.shape[2]]
        else:
            inside = _region_growing(data, seeds, clicks_bg)
        out[roi] = inside
        return out


def _spokes(points: list[list[int]]) -> list[list[int]]:
    """Voxels of the straight segments from the extreme points' centroid to each point: foreground
    scribbles for objects that are star-shaped about their centre (as "Going to Extremes", Roth et al.
    2019, seeds its random walker from paths between extreme points)."""
    if not points:
        return []
    pts = np.asarray(points, dtype=np.float64)
    centre = pts.mean(axis=0)
    out = []
    for p in pts:
        n = int(np.ceil(np.abs(p - centre).max())) + 1
        out.append(np.rint(np.linspace(centre, p, n)).astype(np.int64))
    return np.unique(np.concatenate(out), axis=0).tolist()


def _border(seeds: np.ndarray, slice_axis: int | None, lo: np.ndarray, hi: np.ndarray, size: np.ndarray) -> None:
    """Mark the region's faces as background, except faces on the volume's own border (the object may
    touch it) and the two faces of a 2D slice."""
    for d in range(3):
        if d == slice_axis:
            continue
        ax = 2 - d
        if lo[d] > 0:
            seeds[(slice(None),) * ax + (0,)] = 2
        if hi[d] < size[d]:
            seeds[(slice(None),) * ax + (-1,)] = 2


def _intensity_model(data: np.ndarray, smooth: np.ndarray, seeds: np.ndarray) -> tuple[float, float]:
    """The object's intensity (median of the smoothed image around the foreground seeds) and spread:
    the larger of the seeds' neighbourhood MAD and the image noise (MAD of neighbour differences)."""
    near = ndimage.binary_dilation(seeds == 1, iterations=2) & (seeds != 2)
    values = data[near]
    mu = float(np.median(smooth[near]))
    local = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    axis = int(np.argmax(data.shape))
    noise = 1.4826 * float(np.median(np.abs(np.diff(data, axis=axis)))) / np.sqrt(2.0)
    return mu, max(local, noise, 1e-3 * float(np.ptp(data)), 1e-6)


def _random_walker(data: np.ndarray, seeds: np.ndarray, spacing_kji: np.ndarray, beta: float) -> np.ndarray:
    """Random walker on a region: the clicks' intensity model turns voxels far from the object's
    intensity (beyond ``SEED_SIGMAS`` spreads) into background seeds, and sets the edge contrast; a
    single click alone would only ever win the voxels next to it (the potential of a point decays)."""
    from skimage.segmentation import random_walker

    squeeze = tuple(a for a in range(3) if data.shape[a] == 1)
    stride = max(1, int(np.ceil((data.size / MAX_ROI_VOXELS) ** (1.0 / max(1, 3 - len(squeeze))))))
    if stride > 1:
        seeds = _stride_seeds(seeds, stride)
        data = data[::stride, ::stride, ::stride]
        spacing_kji = np.asarray(spacing_kji) * stride
    full_shape = data.shape
    sigma = [0.0 if a in squeeze else 1.0 for a in range(3)]
    x = ndimage.gaussian_filter(data, sigma)
    mu, spread = _intensity_model(data, x, seeds)
    seeds = seeds.copy()
    seeds[(np.abs(x - mu) > SEED_SIGMAS * spread) & (seeds == 0)] = 2
    x = np.clip((x - mu) / (SEED_SIGMAS * spread), -1.0, 1.0)
    if not (seeds == 2).any():
        inside = np.ones(full_shape, np.uint8)  # nothing marks background: the whole region is the object
    else:
        # Relative spacing only: skimage divides gradients by it, so millimetres would rescale beta.
        kept = [float(s) for a, s in enumerate(spacing_kji) if a not in squeeze]
        sp = tuple(s / min(kept) for s in kept)
        with warnings.catch_warnings():
            # Strong edges make the solver's probabilities overshoot [0, 1] by a little; labels are unaffected.
            warnings.filterwarnings("ignore", message="The probability range is outside", category=UserWarning)
            labels = random_walker(np.squeeze(x, axis=squeeze), np.squeeze(seeds, axis=squeeze).astype(np.int32),
                                   beta=beta, mode=_solver(), tol=1e-3, spacing=sp)
        inside = (np.expand_dims(labels, squeeze) if squeeze else labels) == 1
    if stride > 1:
        inside = np.repeat(np.repeat(np.repeat(inside, stride, 0), stride, 1), stride, 2)
    return inside.astype(np.uint8)


def _solver() -> str:
    """Multigrid-preconditioned CG when pyamg is installed (several times faster), else Jacobi."""
    import importlib.util

    return "cg_mg" if importlib.util.find_spec("pyamg") else "cg_j"


def _stride_seeds(seeds: np.ndarray, stride: int) -> np.ndarray:
    """Seeds on the strided grid: every seed lands on its nearest coarse voxel (foreground wins)."""
    shape = tuple(-(-n // stride) for n in seeds.shape)
    coarse = np.zeros(shape, np.uint8)
    for value in (2, 1):
        idx = np.argwhere(seeds == value) // stride
        coarse[tuple(idx.T)] = value
    return coarse


def _region_growing(data: np.ndarray, seeds: np.ndarray, clicks_bg: list[np.ndarray]) -> np.ndarray:
    """Confidence-connected growing from the foreground seeds (``seeds == 1``); ``clicks_bg`` are the
    background clicks (``[k, j, i]`` in the region) that must end up outside."""
    img = sitk.GetImageFromArray(data)
    fg = [tuple(int(v) for v in p[::-1]) for p in np.argwhere(seeds == 1)]  # sitk indices are [i, j, k]
    multiplier = 2.5
    for _ in range(8):
        grown = sitk.GetArrayFromImage(sitk.ConfidenceConnected(
            img, seedList=fg, numberOfIterations=2, multiplier=multiplier, initialNeighborhoodRadius=1,
            replaceValue=1)).astype(np.uint8)
        if not any(grown[tuple(p)] for p in clicks_bg):
            break
        multiplier *= 0.7
    # Keep only what is connected to a foreground seed without crossing the region's border seeds.
    grown[seeds == 2] = 0
    comps, _ = ndimage.label(grown)
    keep = {int(comps[tuple(p[::-1])]) for p in fg} - {0}
    return np.isin(comps, list(keep)).astype(np.uint8) if keep else grown * 0

