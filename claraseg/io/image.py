"""The :class:`Image` value type: voxels as numpy ``[k, j, i]`` plus explicit LPS geometry.

Geometry follows ITK: ``physical = origin + direction @ (spacing * [i, j, k])`` in LPS millimetres,
where the columns of ``direction`` are the directions of the i, j and k axes. RAS is obtained by
flipping the first two physical coordinates, which is done only in :mod:`claraseg.io.geometry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from claraseg.errors import GeometryMismatchError, InvalidImageError

#: Largest volume accepted anywhere (voxels); a 1024^3 float32 volume is already 4 GiB.
MAX_VOXELS = 1024**3
#: Tolerance for "same grid" comparisons (mm for origins, relative for spacing, absolute for cosines).
GRID_ATOL = 1e-4


@dataclass(frozen=True)
class LabelInfo:
    """A label value's name and display colour (RGB in [0, 1]), as Slicer segments carry them."""

    name: str
    color: tuple[float, float, float] | None = None


@dataclass
class Image:
    """A 3D scalar image or label map.

    Attributes:
        array: voxels, numpy ``[k, j, i]`` (slowest axis first, as SimpleITK and Slicer arrays).
        origin: LPS position (mm) of voxel ``[0, 0, 0]``, shape ``(3,)``.
        spacing: voxel size along i, j, k (mm), shape ``(3,)``.
        direction: 3x3 matrix whose columns are the LPS directions of the i, j, k axes.
        labels: for label maps, value -> :class:`LabelInfo` (names and colours); empty otherwise.
        metadata: free-form key/values kept from the file (modality, patient id, series uid...).
    """

    array: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    labels: dict[int, LabelInfo] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        validate_geometry(self.origin, self.spacing, self.direction)
        if not isinstance(self.array, np.ndarray):
            self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InvalidImageError(
                f"expected a 3D volume, got an array of {self.array.ndim} dimensions (shape {self.array.shape}); "
                "2D images must be given as a single slice (shape [1, j, i]) and 4D/multi-channel images "
                "split into 3D volumes first"
            )
        if self.array.dtype.kind not in "biuf":
            raise InvalidImageError(
                f"voxels of type {self.array.dtype} are not supported; use integer, float or boolean voxels"
            )
        if min(self.array.shape) < 1:
            raise InvalidImageError(f"the volume is empty (shape {self.array.shape})")
        if self.array.size > MAX_VOXELS:
            raise InvalidImageError(
                f"the volume has {self.array.size:,} voxels, more than the {MAX_VOXELS:,} supported; "
                "crop or downsample it first"
            )

    # ----- shape ---------------------------------------------------------------------------------
    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (the reverse of ``array.shape``)."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def is_label(self) -> bool:
        """Integer voxels flagged as a label map (names in ``labels`` or ``metadata["is_label"]``)."""
        return np.issubdtype(self.array.dtype, np.integer) and bool(self.labels or self.metadata.get("is_label"))

    # ----- geometry --------------------------------------------------------------------------------
    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix from voxel index ``[i, j, k, 1]`` to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix from voxel index to RAS millimetres (Slicer's world frame)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.ijk_to_lps

    def with_array(self, array: np.ndarray, *, labels: dict[int, LabelInfo] | None = None) -> Image:
        """A new image on the same grid with other voxels (metadata copied)."""
        if tuple(array.shape) != tuple(self.array.shape):
            raise GeometryMismatchError(
                f"array shape {tuple(array.shape)} does not match the image's shape {tuple(self.array.shape)}"
            )
        return dataclasses.replace(
            self,
            array=array,
            labels=dict(self.labels if labels is None else labels),
            metadata=dict(self.metadata),
        )

    def grid_differences(self, other: Image, atol: float = GRID_ATOL) -> list[str]:
        """Human-readable list of the ways the two voxel grids differ (empty when they match)."""
        diffs = []
        if self.array.shape != other.array.shape:
            diffs.append(f"size (i, j, k) {self.size_ijk} vs {other.size_ijk}")
        if not np.allclose(self.spacing, other.spacing, rtol=atol, atol=atol):
            diffs.append(f"spacing {np.round(self.spacing, 5).tolist()} vs {np.round(other.spacing, 5).tolist()}")
        tol = max(atol, atol * float(np.max(self.spacing)))
        if not np.allclose(self.origin, other.origin, atol=tol * 10):
            diffs.append(f"origin {np.round(self.origin, 4).tolist()} vs {np.round(other.origin, 4).tolist()}")
        if not np.allclose(self.direction, other.direction, atol=atol):
            diffs.append(
                f"direction {np.round(self.direction, 4).ravel().tolist()} vs "
                f"{np.round(other.direction, 4).ravel().tolist()}"
            )
        return diffs

    def same_grid(self, other: Image, atol: float = GRID_ATOL) -> bool:
        """True when both images have the same size, spacing, origin and direction (within ``atol``)."""
        return not self.grid_differences(other, atol)

    def check_same_grid(self, other: Image, what: str = "label", atol: float = GRID_ATOL) -> None:
        """Raise :class:`GeometryMismatchError` naming every difference between the two grids."""
        diffs = self.grid_differences(other, atol)
        if diffs:
            raise GeometryMismatchError(
                f"the {what} is not on the image's voxel grid: " + "; ".join(diffs)
                + f". Resample the {what} onto the image first (claraseg.io.resample_to)."
            )

    def __repr__(self) -> str:  # keep reprs short: arrays can be huge
        return (
            f"Image(size_ijk={self.size_ijk}, dtype={self.array.dtype}, spacing={np.round(self.spacing, 4).tolist()}, "
            f"origin={np.round(self.origin, 3).tolist()}, labels={len(self.labels)})"
        )


def validate_geometry(origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray) -> None:
    """Raise :class:`InvalidImageError` for non-finite or degenerate geometry."""
    if not (np.all(np.isfinite(origin)) and np.all(np.isfinite(spacing)) and np.all(np.isfinite(direction))):
        raise InvalidImageError("the image geometry holds NaN or infinite values (origin, spacing or direction)")
    if np.any(spacing <= 0) or np.any(spacing > 1e4) or np.any(spacing < 1e-4):
        raise InvalidImageError(
            f"voxel spacing {spacing.tolist()} mm is not plausible (each must lie in [1e-4, 1e4] mm)"
        )
    if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3 or not np.allclose(
        direction.T @ direction, np.eye(3), atol=1e-3
    ):
        raise InvalidImageError(
            f"the direction matrix {np.round(direction, 4).tolist()} is not orthonormal; "
            "sheared or scaled directions are not supported"
        )


def check_finite(image: Image) -> None:
    """Raise :class:`InvalidImageError` when a float image holds NaN or infinite voxels."""
    a = image.array
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise InvalidImageError(
            f"the image holds {bad:,} NaN or infinite voxels; replace them (e.g. with the minimum intensity) first"
        )
