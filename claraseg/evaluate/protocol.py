"""The click protocol of ANCHORS.md ("Click-protocol evaluation"), on any :class:`~claraseg.backend.Backend`.

One object at a time, binary, on the image's own grid:

1. error = prediction != truth; its largest 26-connected component (8-connected on a 2D slice); the next
   click is the voxel of maximal Euclidean distance transform inside that component (voxel units; the
   volume's outside counts as outside the component, so clicks keep off the image border); ties between
   voxels (and between equally large components) are broken by an RNG seeded 42, made afresh for every
   structure; the click is foreground where the truth is 1. On an empty prediction this is the deepest
   interior point of the object.
2. DEXTR3D starts with the 6 extreme points of the truth (min and max along i, j, k; among ties the voxel
   nearest the centroid); robustness runs add symmetric +-3-voxel jitter.
3. Interactions are numbered from 1 (DEXTR3D: the extreme points are interaction 1, refinement clicks
   follow). Dice after every interaction, NoC@80/85/90 (capped at 20) and the trapezoid area under the
   Dice curve over the 5 refinement clicks (max 4.0).

DeepGrow 2D is evaluated on one slice per structure: the slice through the object's largest
cross-section along the chosen axis, with the protocol restricted to that slice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from claraseg.backend import Session
from claraseg.errors import ClarasegError, InvalidPointsError
from claraseg.guidance.clicks import extreme_points as _extreme_points
from claraseg.guidance.clicks import jitter_points
from claraseg.io import MaskDelta

#: Seed of the tie-breaking RNG (ANCHORS.md).
TIE_SEED = 42
#: NoC values are capped at this many interactions (a threshold never reached counts as the cap).
NOC_CAP = 20
#: Dice thresholds of the NoC figures.
NOC_THRESHOLDS = (0.80, 0.85, 0.90)
#: Number of refinement clicks the Dice AUC covers (so its maximum is ``AUC_CLICKS - 1``).
AUC_CLICKS = 5
#: Symmetric jitter (voxels) of the extreme-point robustness runs.
EXTREME_JITTER = 3
#: Model kinds whose first interaction is the extreme-point prompt.
EXTREME_KINDS = ("dextr3d",)
#: Kinds evaluated on one slice.
SLICE_KINDS = ("deepgrow2d",)


# ----- the protocol's arithmetic -----------------------------------------------------------------
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary arrays of the same shape; 1.0 when both are empty."""
    p = pred.astype(bool, copy=False)
    t = truth.astype(bool, copy=False)
    denom = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    if denom == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / denom


def number_of_clicks(dice_curve: Sequence[float], threshold: float, cap: int = NOC_CAP) -> int:
    """NoC@threshold: the first interaction (numbered from 1) whose Dice reaches ``threshold``;
    ``cap`` when none within the first ``cap`` interactions does."""
    for n, d in enumerate(dice_curve[:cap], start=1):
        if d >= threshold:
            return n
    return cap


def dice_auc(dice_curve: Sequence[float], first: int = 1, clicks: int = AUC_CLICKS) -> float | None:
    """Trapezoid area (unit steps) under the Dice after interactions ``first .. first + clicks - 1``;
    at most ``clicks - 1``. None when the curve is shorter."""
    y = np.asarray(dice_curve[first - 1:first - 1 + clicks], dtype=np.float64)
    if len(y) < clicks:
        return None
    return float(np.sum((y[1:] + y[:-1]) / 2.0))


def next_click(pred: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> tuple[tuple[int, ...], bool] | None:
    """The protocol's next click on a 2D or 3D binary array pair: ``(index, foreground)`` with the index
    in the arrays' own axis order, or None when the prediction is exact."""
    error = pred.astype(bool) != truth.astype(bool)
    box = _nonzero_box(error)
    if box is None:
        return None
    # Work in the error's bounding box plus one voxel: components, EDT and the argmax stay local.
    lo = [max(0, s.start - 1) for s in box]
    hi = [min(n, s.stop + 1) for s, n in zip(box, error.shape)]
    sub = tuple(slice(a, b) for a, b in zip(lo, hi))
    err = error[sub]
    components, n = ndimage.label(err, structure=np.ones((3,) * err.ndim, dtype=bool))
    sizes = np.bincount(components.ravel())[1:]
    largest = np.flatnonzero(sizes == sizes.max()) + 1
    chosen = int(largest[rng.integers(len(largest))]) if len(largest) > 1 else int(largest[0])
    comp = components == chosen
    # Pad with "outside" so that the volume border bounds the distance like the component's own border.
    dist = ndimage.distance_transform_edt(np.pad(comp, 1))[(slice(1, -1),) * comp.ndim]
    best = np.argwhere(dist == dist.max())
    pick = best[rng.integers(len(best))] if len(best) > 1 else best[0]
    index = tuple(int(p + o) for p, o in zip(pick, lo))
    return index, bool(truth[index])


def extreme_points(truth: np.ndarray, jitter: int = 0, rng: np.random.Generator | None = None) -> list[list[int]]:
    """The 6 extreme points ``[i, j, k]`` of a binary ``[k, j, i]`` mask
    (:func:`claraseg.guidance.extreme_points`: min and max along i, j, k, each the voxel nearest the
    centroid among the ties). With ``jitter`` each coordinate moves by a uniform integer in
    ``[-jitter, +jitter]`` (symmetric, :func:`claraseg.guidance.jitter_points`), clipped to the volume."""
    pts = _extreme_points(truth)
    if len(pts) == 0:
        raise InvalidPointsError("the structure is empty: it has no extreme points")
    if jitter:
        rng = rng if rng is not None else np.random.default_rng(0)
        pts = jitter_points(pts, rng, jitter, truth.shape[::-1])
    return pts.tolist()


def largest_cross_section(truth: np.ndarray, slice_axis: int) -> int:
    """Index (along ``slice_axis``, 0 = i, 1 = j, 2 = k) of the slice with the most object voxels."""
    array_axis = 2 - slice_axis
    other = tuple(a for a in range(3) if a != array_axis)
    return int(np.argmax(np.count_nonzero(truth, axis=other)))


def _nonzero_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    objs = ndimage.find_objects(mask.astype(np.uint8))
    return objs[0] if objs else None


# ----- results --------------------------------------------------------------------------------------
@dataclass
class Interaction:
    """One prompt of the protocol and what it gave."""

    number: int
    kind: str  # "extreme_points", "foreground" or "background"
    points: list[list[int]]  # [i, j, k]
    dice: float
    latency_ms: float
    compute_ms: float


@dataclass
class StructureResult:
    """The protocol's outcome for one structure (one object)."""

    label: int
    name: str
    voxels: int
    dice: list[float]  # after interactions 1..N
    latency_ms: list[float]  # per interaction actually run (none once the prediction is exact)
    compute_ms: list[float]  # the part of each latency spent computing (remote: as the server reports it)
    noc: dict[str, int]  # "80"/"85"/"90" -> interactions
    auc: float | None
    interactions: list[Interaction] = field(default_factory=list)
    exact_at: int | None = None  # interaction after which the prediction equalled the truth
    slice: dict[str, int] | None = None  # 2D runs: {"axis": a, "index": n}
    jitter_seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----- running the protocol -------------------------------------------------------------------------
class _ObjectMask:
    """The evaluator's copy of an object's mask, kept up to date from the deltas, with the box the
    object can occupy (so per-click work stays proportional to the object, not the volume)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.full = np.zeros(shape, dtype=np.uint8)
        self.box: list[list[int]] | None = None  # [[k0, k1], [j0, j1], [i0, i1]]

    def apply(self, delta: MaskDelta) -> None:
        if tuple(delta.image_size[::-1]) != self.full.shape:
            raise ClarasegError(
                f"the backend returned a delta for a volume of size {list(delta.image_size)}, "
                f"not the session image's {list(self.full.shape[::-1])}"
            )
        delta.paste(self.full)
        if not delta.is_empty:
            box = [[s.start, s.stop] for s in delta.slices]
            self.box = box if self.box is None else [[min(a[0], b[0]), max(a[1], b[1])] for a, b in zip(self.box, box)]


def _union_box(a: tuple[slice, ...], b: list[list[int]] | None) -> tuple[slice, ...]:
    if b is None:
        return a
    return tuple(slice(min(s.start, lo), max(s.stop, hi)) for s, (lo, hi) in zip(a, b))


def run_structure(
    session: Session,
    model: str,
    kind: str,
    truth: np.ndarray,
    *,
    label: int = 1,
    name: str = "object",
    interactions: int = NOC_CAP,
    refine_model: str | None = None,
    slice_axis: int = 2,
    jitter_seed: int | None = None,
    object_id: str | None = None,
    first_click_seed: int | None = None,
) -> StructureResult:
    """Run the protocol for one structure and return its Dice curve, NoC, AUC and latencies.

    Args:
        session: an open session on the image the truth belongs to (any backend).
        model: the model (or classical method) prompted; for ``dextr3d`` the extreme-point model.
        kind: the protocol to follow: ``deepgrow3d``, ``deepgrow2d`` or ``dextr3d``.
        truth: binary ``[k, j, i]`` mask on the session image's grid.
        interactions: N, the number of interactions to run (the Dice curve has N values).
        refine_model: model for the refinement clicks after the extreme points (``dextr3d`` only).
        slice_axis: ``deepgrow2d`` only: 0 = i, 1 = j, 2 = k.
        jitter_seed: ``dextr3d`` only: jitter the extreme points by +-3 voxels with this seed.
        object_id: the session object to use (cleared afterwards); defaults to the label value.
        first_click_seed: click kinds only: the first click is a voxel drawn with this seed among those of
            the structure at least half as deep inside it as its deepest one (:func:`first_click_at_depth`),
            instead of the deepest; the next clicks follow the protocol. Several seeds give several
            plausible click sequences of one structure.
    """
    truth = truth.astype(bool, copy=False)
    if interactions < 1:
        raise ClarasegError("the number of interactions must be at least 1")
    if not truth.any():
        raise ClarasegError(f"structure {label} ({name}) has no voxels in the label map")
    oid = object_id or f"eval-{label}" + ("" if jitter_seed is None else f"-j{jitter_seed}")
    rng = np.random.default_rng(TIE_SEED)
    obj = _ObjectMask(truth.shape)
    voxels = int(np.count_nonzero(truth))
    slice_info = None
    if kind in SLICE_KINDS:
        index = largest_cross_section(truth, slice_axis)
        slice_info = {"axis": slice_axis, "index": index}
        region = _slice_region(truth.shape, slice_axis, index)
    else:
        region = _nonzero_box(truth)
    curve: list[float] = []
    latencies: list[float] = []
    computes: list[float] = []
    steps: list[Interaction] = []
    exact_at = None
    try:
        for number in range(1, interactions + 1):
            if number == 1 and kind in EXTREME_KINDS:
                jrng = None if jitter_seed is None else np.random.default_rng(jitter_seed)
                points = extreme_points(truth, EXTREME_JITTER if jitter_seed is not None else 0, jrng)
                t0 = time.perf_counter()
                delta = session.extreme_points(model, points, object_id=oid)
                step_kind = "extreme_points"
            else:
                box = region if kind in SLICE_KINDS else _union_box(region, obj.box)
                if number == 1 and first_click_seed is not None:
                    point, foreground = first_click_at_depth(truth, box, first_click_seed), True
                else:
                    point, foreground = _protocol_click(obj.full, truth, box, kind, slice_axis, rng)
                points = [point]
                click_model = refine_model if (kind in EXTREME_KINDS and refine_model) else model
                t0 = time.perf_counter()
                delta = session.click(
                    click_model,
                    foreground=points if foreground else (),
                    background=() if foreground else points,
                    object_id=oid,
                    slice_axis=slice_axis if kind in SLICE_KINDS else None,
                )
                step_kind = "foreground" if foreground else "background"
            latency = (time.perf_counter() - t0) * 1000.0
            compute = _compute_ms(session, latency)
            obj.apply(delta)
            box = region if kind in SLICE_KINDS else _union_box(region, obj.box)
            d = dice(obj.full[box], truth[box])
            curve.append(d)
            latencies.append(latency)
            computes.append(compute)
            steps.append(Interaction(number, step_kind, [list(map(int, p)) for p in points], d, latency, compute))
            if d == 1.0:  # exact: no error left to click on, the curve stays at 1
                exact_at = number
                curve.extend([1.0] * (interactions - number))
                break
    finally:
        session.clear(oid)
    first_refinement = 2 if kind in EXTREME_KINDS else 1
    return StructureResult(
        label=label, name=name, voxels=voxels, dice=curve, latency_ms=latencies, compute_ms=computes,
        noc={f"{round(t * 100)}": number_of_clicks(curve, t) for t in NOC_THRESHOLDS},
        auc=dice_auc(curve, first_refinement), interactions=steps, exact_at=exact_at,
        slice=slice_info, jitter_seed=jitter_seed,
    )


def first_click_at_depth(truth: np.ndarray, box: tuple[slice, ...], seed: int, depth: float = 0.5) -> list[int]:
    """A first click ``[i, j, k]`` inside ``box``: a voxel of the structure drawn with ``seed`` among those
    whose distance to its border is at least ``depth`` times the deepest voxel's (the protocol's own first
    click), so that it stays well inside, as a user's would."""
    t = truth[box].astype(bool)
    flat = tuple(a for a, n in enumerate(t.shape) if n == 1)  # a slice (2D kinds): depth within the slice
    plane = np.squeeze(t, axis=flat) if flat else t
    dist = ndimage.distance_transform_edt(np.pad(plane, 1))[(slice(1, -1),) * plane.ndim]
    dist = np.expand_dims(dist, flat) if flat else dist
    candidates = np.argwhere(dist >= depth * dist.max())
    pick = candidates[np.random.default_rng(seed).integers(len(candidates))]
    return [int(p + s.start) for p, s in zip(pick, box)][::-1]


def _compute_ms(session: Session, latency_ms: float) -> float:
    """Compute time of the call just made: what a remote session reports the server spent
    (``last_compute_ms``); for an in-process session the whole latency is compute."""
    reported = getattr(session, "last_compute_ms", None)
    if isinstance(reported, (int, float)) and np.isfinite(reported):
        return float(min(reported, latency_ms))
    return latency_ms


def _slice_region(shape: tuple[int, int, int], slice_axis: int, index: int) -> tuple[slice, ...]:
    region = [slice(0, n) for n in shape]
    region[2 - slice_axis] = slice(index, index + 1)
    return tuple(region)


def _protocol_click(pred: np.ndarray, truth: np.ndarray, box: tuple[slice, ...], kind: str, slice_axis: int,
                    rng: np.random.Generator) -> tuple[list[int], bool]:
    """Next click ``([i, j, k], foreground)`` computed inside ``box`` (a 3D box, or one slice for 2D);
    only called while the prediction differs from the truth there."""
    p, t = pred[box], truth[box]
    if kind in SLICE_KINDS:
        array_axis = 2 - slice_axis
        found = next_click(np.squeeze(p, axis=array_axis), np.squeeze(t, axis=array_axis), rng)
        if found is None:
            raise ClarasegError("internal: no error left on the slice to click on")
        kji = list(found[0])
        kji.insert(array_axis, 0)
    else:
        found = next_click(p, t, rng)
        if found is None:
            raise ClarasegError("internal: no error left to click on")
        kji = list(found[0])
    kji = [int(v + s.start) for v, s in zip(kji, box)]
    return kji[::-1], found[1]
