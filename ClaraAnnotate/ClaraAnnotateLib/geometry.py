"""Slicer-side geometry without Slicer: matrices in, matrices and voxel indices out.

Slicer gives 4x4 matrices (a volume's IJKToRAS, a parent transform's matrix, a slice view's SliceToRAS);
everything here works on those as numpy arrays, so it is tested with pytest and reused by the module and
the Segment Editor effect. Conventions: points are RAS millimetres in Slicer's world frame, voxel indices
are ``[i, j, k]``, numpy volumes are ``[k, j, i]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from claraseg.errors import GeometryMismatchError, InvalidImageError, InvalidPointsError
from claraseg.io import Image, MaskDelta, check_points_inside
from claraseg.io.geometry import LPS_TO_RAS, apply_matrix

#: Largest angle (degrees) between a slice view's normal and a volume axis that still counts as that axis.
DEFAULT_AXIS_TOLERANCE_DEG = 5.0
AXIS_NAMES = ("i", "j", "k")


class ObliqueSliceError(GeometryMismatchError):
    """A 2D model was used on a slice view that is not aligned with any axis of the volume."""

    code = "oblique_slice"


def _matrix(m, what: str) -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise GeometryMismatchError(f"{what} must be a finite 4x4 matrix, got shape {a.shape}")
    return a


def image_geometry_from_ijk_to_ras(ijk_to_ras) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a Slicer IJKToRAS matrix into claraseg geometry: (origin LPS, spacing, direction LPS 3x3)."""
    m = LPS_TO_RAS @ _matrix(ijk_to_ras, "IJKToRAS")
    cols = m[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0):
        raise InvalidImageError(f"the volume's IJKToRAS matrix has a zero-length axis (spacing {spacing.tolist()})")
    return m[:3, 3].copy(), spacing, cols / spacing


def image_from_array(array_kji: np.ndarray, ijk_to_ras, **kwargs) -> Image:
    """A claraseg :class:`Image` from a Slicer voxel array (``arrayFromVolume``) and its IJKToRAS matrix."""
    origin, spacing, direction = image_geometry_from_ijk_to_ras(ijk_to_ras)
    return Image(np.asarray(array_kji), origin, spacing, direction, **kwargs)


def world_to_ijk(ijk_to_ras, world_to_volume=None) -> np.ndarray:
    """4x4 matrix from Slicer world RAS to the volume's voxel index.

    Args:
        ijk_to_ras: the volume node's IJKToRAS matrix (its own frame, parent transforms not applied).
        world_to_volume: matrix from world to the volume node's frame: the inverse of all its parent
            transforms composed (``vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, m)``).
            ``None`` when the volume is not under a transform.
    """
    ras_to_ijk = np.linalg.inv(_matrix(ijk_to_ras, "IJKToRAS"))
    if world_to_volume is None:
        return ras_to_ijk
    return ras_to_ijk @ _matrix(world_to_volume, "world-to-volume transform")


def world_points_to_ijk(points_ras, world_to_ijk_matrix, size_ijk: Sequence[int], what: str = "point") -> np.ndarray:
    """World RAS points (N x 3) -> integer voxel indices ``[i, j, k]`` (rounded), checked to lie in the volume."""
    p = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    if len(p) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    ijk = np.rint(apply_matrix(_matrix(world_to_ijk_matrix, "world-to-IJK"), p))
    return check_points_inside(size_ijk, ijk, what)


def volume_ijk_to_segmentation(ijk_to_ras, volume_to_segmentation=None) -> np.ndarray:
    """Matrix from the volume's voxel index to the segmentation node's frame.

    ``volume_to_segmentation`` is the transform from the volume node's frame to the segmentation node's
    frame (``GetMatrixTransformBetweenNodes(volumeParent, segmentationParent, m)``); ``None`` when both
    are under the same transform (the usual case). A labelmap written with this geometry lands on the
    volume's voxels even when the two nodes sit under different transforms.
    """
    m = _matrix(ijk_to_ras, "IJKToRAS")
    if volume_to_segmentation is None:
        return m.copy()
    return _matrix(volume_to_segmentation, "volume-to-segmentation transform") @ m


def slice_axis(slice_to_ras, world_to_ijk_matrix, tolerance_deg: float = DEFAULT_AXIS_TOLERANCE_DEG) -> int:
    """The volume axis (0 = i, 1 = j, 2 = k) a slice view cuts across, for 2D models.

    A view shows one index-``a`` slice when its plane is a level set of voxel index ``a``; the normal
    of such planes is row ``a`` of the world-to-IJK matrix (the gradient of index ``a``). The view's
    normal (third column of SliceToRAS) is compared with each row; the best one wins when within
    ``tolerance_deg``. Works for any orientation (axial/sagittal/coronal views of tilted volumes,
    reformatted views) and any parent transform folded into ``world_to_ijk_matrix``.

    Raises:
        ObliqueSliceError: the view is oblique to every axis by more than the tolerance.
    """
    s = _matrix(slice_to_ras, "SliceToRAS")
    a = _matrix(world_to_ijk_matrix, "world-to-IJK")
    normal = np.cross(s[:3, 0], s[:3, 1])
    if np.linalg.norm(normal) == 0:
        raise GeometryMismatchError("the slice view's SliceToRAS matrix is degenerate (its x and y axes are parallel)")
    normal /= np.linalg.norm(normal)
    rows = a[:3, :3]
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosines = np.abs(rows @ normal)
    axis = int(np.argmax(cosines))
    angle = float(np.degrees(np.arccos(np.clip(cosines[axis], -1.0, 1.0))))
    if angle > tolerance_deg:
        raise ObliqueSliceError(
            f"this slice view is {angle:.1f} degrees oblique to the volume's nearest axis ({AXIS_NAMES[axis]}); "
            f"2D models need a view aligned with the volume (tolerance {tolerance_deg:g} degrees). "
            "Use the slice view's 'Reset field of view'/'Rotate to volume plane' option, or pick a 3D model."
        )
    return axis


def distance_to_slice_plane(slice_to_ras, point_ras) -> float:
    """Distance (mm) from a RAS point to the plane a slice view shows."""
    s = _matrix(slice_to_ras, "SliceToRAS")
    normal = np.cross(s[:3, 0], s[:3, 1])
    normal /= np.linalg.norm(normal)
    return float(abs(normal @ (np.asarray(point_ras, dtype=np.float64) - s[:3, 3])))


def pick_slice_view(views: Mapping[str, np.ndarray], point_ras, tolerance_mm: float,
                    preferred: str | None = None) -> str | None:
    """The slice view whose plane holds a point just placed (markups do not say which view they came from).

    ``views`` maps view names to SliceToRAS matrices, in layout order. A point placed in a view lies on
    its plane; among views within ``tolerance_mm``, ``preferred`` (e.g. the view under the mouse) wins,
    then the closest, then the first in order. ``None`` when no view's plane holds the point.
    """
    hits = [(distance_to_slice_plane(m, point_ras), n) for n, m in views.items()]
    close = [(d, n) for d, n in hits if d <= tolerance_mm]
    if not close:
        return None
    if preferred is not None and any(n == preferred for _, n in close):
        return preferred
    return min(close, key=lambda dn: dn[0])[1]


def check_same_slice(points_ijk: np.ndarray, axis: int) -> int:
    """The common index along ``axis`` of 2D-model clicks; raises if the clicks are on different slices."""
    p = np.asarray(points_ijk).reshape(-1, 3)
    values = sorted({int(v) for v in p[:, axis]})
    if len(values) != 1:
        raise InvalidPointsError(
            f"a 2D model works on one slice at a time, but these clicks are on {AXIS_NAMES[axis]} = {values}; "
            "click on one slice per interaction"
        )
    return values[0]


def vtk_extent(delta: MaskDelta) -> list[int]:
    """The VTK extent ``[i0, i1, j0, j1, k0, k1]`` (inclusive) of a mask delta's box."""
    s, e = delta.start, delta.stop
    return [s[0], e[0] - 1, s[1], e[1] - 1, s[2], e[2] - 1]


def extreme_point_count_message(n_points: int, min_points: int) -> str | None:
    """What to tell the user when too few extreme points are placed (``None`` when enough)."""
    if n_points >= min_points:
        return None
    missing = min_points - n_points
    return (f"place {missing} more extreme point{'s' if missing > 1 else ''} "
            f"({n_points} of at least {min_points}: the left-, right-, front-, back-, top- and bottom-most "
            "points of the structure)")
