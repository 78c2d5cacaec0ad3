"""Voxel <-> physical conversions, boxes, resampling, crop/pad and paste.

Conventions (see DESIGN.md): arrays are ``[k, j, i]``; points and boxes are voxel indices ``[i, j, k]``;
physical points are LPS unless a function says RAS. This module is the one place where RAS <-> LPS
flips happen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from claraseg.errors import GeometryMismatchError, InvalidImageError, InvalidPointsError
from claraseg.io.image import Image

#: Multiply a homogeneous LPS point by this to get RAS (and vice versa: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _as_points(points, what: str = "points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    single = p.ndim == 1
    p = np.atleast_2d(p)
    if p.ndim != 2 or p.shape[1] != 3:
        raise InvalidPointsError(f"{what} must be [x, y, z] triples, got an array of shape {np.shape(points)}")
    if not np.all(np.isfinite(p)):
        raise InvalidPointsError(f"{what} contain NaN or infinite coordinates")
    return p[0] if single else p


def lps_to_ras(points) -> np.ndarray:
    """Negate x and y of one or N points: LPS -> RAS (and, being its own inverse, RAS -> LPS)."""
    p = _as_points(points)
    return p * np.array([-1.0, -1.0, 1.0])


ras_to_lps = lps_to_ras  # the flip is its own inverse


def index_to_physical(image: Image, ijk, *, ras: bool = False) -> np.ndarray:
    """Continuous voxel index ``[i, j, k]`` (one or N points) -> LPS (or RAS) millimetres."""
    p = _as_points(ijk, "voxel indices")
    m = image.ijk_to_ras if ras else image.ijk_to_lps
    return p @ m[:3, :3].T + m[:3, 3]


def physical_to_index(image: Image, xyz, *, ras: bool = False) -> np.ndarray:
    """LPS (or RAS) millimetres -> continuous voxel index ``[i, j, k]`` (not rounded)."""
    p = _as_points(xyz, "physical points")
    m = np.linalg.inv(image.ijk_to_ras if ras else image.ijk_to_lps)
    return p @ m[:3, :3].T + m[:3, 3]


def world_to_ijk_matrix(image: Image, world_to_node: np.ndarray | None = None, *, ras: bool = True) -> np.ndarray:
    """4x4 matrix taking a world point to the image's voxel index.

    Args:
        image: the volume whose index space is wanted.
        world_to_node: 4x4 transform from world to the volume's local (node) frame, i.e. the inverse of
            the composition of every parent transform (Slicer: ``GetMatrixTransformFromWorld``).
            ``None`` means no parent transform.
        ras: world points are RAS (Slicer) when True, LPS otherwise.
    """
    node_to_ijk = np.linalg.inv(image.ijk_to_ras if ras else image.ijk_to_lps)
    if world_to_node is None:
        return node_to_ijk
    w = np.asarray(world_to_node, dtype=np.float64)
    if w.shape != (4, 4) or not np.all(np.isfinite(w)):
        raise GeometryMismatchError(f"world_to_node must be a finite 4x4 matrix, got shape {w.shape}")
    return node_to_ijk @ w


def apply_matrix(matrix: np.ndarray, points) -> np.ndarray:
    """Apply a 4x4 homogeneous matrix to one or N 3D points."""
    p = _as_points(points)
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


def world_to_voxel(image: Image, points_world, world_to_node: np.ndarray | None = None, *, ras: bool = True,
                   check_inside: bool = True) -> np.ndarray:
    """World points (RAS by default) -> integer voxel indices ``[i, j, k]`` (rounded to nearest).

    Raises :class:`InvalidPointsError` for points outside the volume when ``check_inside``.
    """
    ijk = np.rint(apply_matrix(world_to_ijk_matrix(image, world_to_node, ras=ras), points_world)).astype(np.int64)
    if check_inside:
        check_points_inside(image.size_ijk, ijk)
    return ijk


def check_points_inside(size_ijk: Sequence[int], points_ijk, what: str = "point") -> np.ndarray:
    """Validate integer voxel points ``[[i, j, k], ...]`` against a volume size; return them as int64 (N, 3)."""
    try:
        p = np.asarray(points_ijk)
    except (ValueError, TypeError, OverflowError):  # ragged lists, mixed types, huge integers
        raise InvalidPointsError(f"each {what} must be an [i, j, k] voxel index of three numbers") from None
    if p.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 3:
        raise InvalidPointsError(f"each {what} must be an [i, j, k] voxel index; got shape {p.shape}")
    if p.dtype == np.bool_ or not np.issubdtype(p.dtype, np.number) or not np.all(np.isfinite(p.astype(np.float64))):
        raise InvalidPointsError(f"{what}s must be finite numbers")
    q = np.rint(p.astype(np.float64)).astype(np.int64)
    size = np.asarray(size_ijk, dtype=np.int64)
    outside = np.any((q < 0) | (q >= size), axis=1)
    if outside.any():
        bad = q[outside][0].tolist()
        raise InvalidPointsError(
            f"{int(outside.sum())} {what}(s) lie outside the volume, e.g. [i, j, k] = {bad}; "
            f"valid indices are 0..{(size - 1).tolist()}"
        )
    return q


# ----- boxes -------------------------------------------------------------------------------------
def box_to_physical(image: Image, start_ijk, stop_ijk, *, ras: bool = False) -> np.ndarray:
    """The 8 physical corners (voxel-edge, not centre) of the half-open voxel box [start, stop)."""
    s = np.asarray(start_ijk, dtype=np.float64) - 0.5
    e = np.asarray(stop_ijk, dtype=np.float64) - 0.5
    corners = np.array([[x, y, z] for x in (s[0], e[0]) for y in (s[1], e[1]) for z in (s[2], e[2])])
    return index_to_physical(image, corners, ras=ras)


def physical_box_to_index(image: Image, corners, *, ras: bool = False, clip: bool = True):
    """Smallest voxel box [start, stop) (``[i, j, k]``) containing physical points; optionally clipped."""
    idx = physical_to_index(image, corners, ras=ras)
    # Voxel v covers indices [v - 0.5, v + 0.5); a point on a voxel edge (within rounding) does not pull
    # the neighbour in, so box_to_physical -> physical_box_to_index is the identity.
    eps = 1e-6
    start = np.floor(idx.min(axis=0) + 0.5 + eps).astype(np.int64)
    stop = np.maximum(np.ceil(idx.max(axis=0) + 0.5 - eps).astype(np.int64), start + 1)
    if clip:
        start, stop = clip_box(start, stop, image.size_ijk)
    return start, stop


def clip_box(start_ijk, stop_ijk, size_ijk):
    """Clip a box ``[start, stop)`` (``[i, j, k]``) to a volume of ``size_ijk``; an outside box becomes empty."""
    size = np.asarray(size_ijk, dtype=np.int64)
    start = np.clip(np.asarray(start_ijk, dtype=np.int64), 0, size)
    stop = np.clip(np.asarray(stop_ijk, dtype=np.int64), 0, size)
    return start, np.maximum(stop, start)


def box_slices(start_ijk, stop_ijk) -> tuple[slice, slice, slice]:
    """numpy slices ``[k, j, i]`` for a box given as ``[i, j, k]`` start/stop."""
    s = [int(v) for v in start_ijk]
    e = [int(v) for v in stop_ijk]
    return (slice(s[2], e[2]), slice(s[1], e[1]), slice(s[0], e[0]))


def bounding_box(mask: np.ndarray, margin=0):
    """Bounding box ``[i, j, k]`` start/stop of the non-zero voxels of a ``[k, j, i]`` array, or None."""
    nz = np.nonzero(mask)
    if len(nz[0]) == 0:
        return None
    lo = np.array([nz[2].min(), nz[1].min(), nz[0].min()], dtype=np.int64)
    hi = np.array([nz[2].max(), nz[1].max(), nz[0].max()], dtype=np.int64) + 1
    m = np.broadcast_to(np.asarray(margin, dtype=np.int64), (3,))
    size = np.array(mask.shape[::-1])
    return clip_box(lo - m, hi + m, size)


def crop(image: Image, start_ijk, stop_ijk, *, pad_value: float = 0) -> Image:
    """Crop to the voxel box [start, stop) (``[i, j, k]``), padding with ``pad_value`` where it
    extends past the volume. The result keeps the physical position of every voxel."""
    start = np.asarray(start_ijk, dtype=np.int64)
    stop = np.asarray(stop_ijk, dtype=np.int64)
    if np.any(stop <= start):
        raise InvalidImageError(f"empty crop box: start {start.tolist()}, stop {stop.tolist()}")
    size = np.asarray(image.size_ijk)
    cs, ce = clip_box(start, stop, size)
    shape = tuple((stop - start)[::-1])
    out = np.full(shape, pad_value, dtype=image.array.dtype)
    dst = box_slices(cs - start, ce - start)
    out[dst] = image.array[box_slices(cs, ce)]
    origin = index_to_physical(image, start.astype(np.float64))
    return Image(out, origin, image.spacing.copy(), image.direction.copy(), dict(image.labels), dict(image.metadata))


def paste(into: np.ndarray, patch: np.ndarray, start_ijk) -> np.ndarray:
    """Write ``patch`` (``[k, j, i]``) into ``into`` at voxel ``start_ijk``, clipping what falls outside.
    Modifies and returns ``into``."""
    start = np.asarray(start_ijk, dtype=np.int64)
    stop = start + np.asarray(patch.shape[::-1])
    size = np.asarray(into.shape[::-1])
    cs, ce = clip_box(start, stop, size)
    if np.any(ce <= cs):
        return into
    into[box_slices(cs, ce)] = patch[box_slices(cs - start, ce - start)]
    return into


# ----- SimpleITK bridge and resampling ------------------------------------------------------------
def to_sitk(image: Image) -> sitk.Image:
    """The image as a SimpleITK image (boolean voxels become uint8, float16 becomes float32)."""
    a = image.array
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    img = sitk.GetImageFromArray(a, isVector=False)
    img.SetOrigin([float(v) for v in image.origin])
    img.SetSpacing([float(v) for v in image.spacing])
    img.SetDirection([float(v) for v in image.direction.ravel()])
    return img


def from_sitk(img: sitk.Image, **kwargs) -> Image:
    """An :class:`Image` from a 3D scalar SimpleITK image; ``kwargs`` go to :class:`Image` (labels, metadata)."""
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(
            f"expected a 3D scalar image, got {img.GetDimension()}D with "
            f"{img.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    return Image(
        sitk.GetArrayFromImage(img),
        np.array(img.GetOrigin()),
        np.array(img.GetSpacing()),
        np.array(img.GetDirection()).reshape(3, 3),
        **kwargs,
    )


def resample_to(image: Image, reference: Image, *, is_label: bool | None = None, default_value: float = 0) -> Image:
    """Resample ``image`` onto ``reference``'s voxel grid (physical positions preserved).

    Linear interpolation for images, nearest neighbour for label maps (integer values preserved);
    ``is_label`` defaults to "the image has an integer dtype and label names or is flagged a label".
    """
    if is_label is None:
        is_label = image.is_label
    if image.same_grid(reference):
        return image
    ref = sitk.Image([int(v) for v in reference.size_ijk], sitk.sitkUInt8)
    ref.SetOrigin([float(v) for v in reference.origin])
    ref.SetSpacing([float(v) for v in reference.spacing])
    ref.SetDirection([float(v) for v in reference.direction.ravel()])
    src = to_sitk(image)
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    out_type = src.GetPixelID() if is_label else sitk.sitkFloat32
    res = sitk.Resample(src, ref, sitk.Transform(), interp, float(default_value), out_type)
    out = from_sitk(res, labels=dict(image.labels), metadata=dict(image.metadata))
    return out


def resample_to_spacing(image: Image, spacing, *, is_label: bool | None = None) -> Image:
    """Resample to a new voxel spacing (mm, along i, j, k): same direction, the centre of the field of view
    kept, the extent as close as whole voxels allow (linear for images, nearest for label maps)."""
    if is_label is None:
        is_label = image.is_label
    spacing = np.asarray(spacing, dtype=np.float64).reshape(3)
    if np.any(spacing <= 0):
        raise InvalidImageError(f"target spacing must be positive, got {spacing.tolist()}")
    if np.allclose(spacing, image.spacing):
        return image
    size = np.maximum(1, np.round(np.asarray(image.size_ijk) * image.spacing / spacing)).astype(int)
    # Keep the physical centre of the extent fixed: the first voxel centre moves by half the difference.
    shift = (spacing - image.spacing) / 2.0
    origin = image.origin + image.direction @ shift
    ref = Image(np.zeros(tuple(size[::-1]), dtype=np.uint8), origin, spacing, image.direction)
    return resample_to(image, ref, is_label=is_label)
