"""DICOM series the tests write themselves: orientations, slice order, rescale, several series, broken folders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from claraseg.errors import ClarasegError, DicomError
from claraseg.io import (
    Image,
    index_to_physical,
    list_dicom_series,
    make_phantom,
    read_dicom_series,
    read_image,
    resample_to,
    write_dicom_series,
)

ORIENTATIONS = {
    "axial": np.eye(3),
    "sagittal": np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=np.float64),
    "coronal": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64),
    "oblique": None,  # the phantom's random rotation
}
SIZE = (24, 20, 10)


def phantom(direction=None, seed=3):
    image, label = make_phantom(seed=seed, size_ijk=SIZE, direction=direction)
    return image, label


def assert_same_geometry(a: Image, b: Image, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_orientations_round_trip(tmp_path, name):
    image, _ = phantom(ORIENTATIONS[name])
    files = write_dicom_series(image, tmp_path / name)
    assert len(files) == SIZE[2]
    back = read_image(tmp_path / name)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, image.array)
    assert_same_geometry(back, image)
    assert back.metadata["modality"] == "CT" and back.metadata["series_uid"]


@pytest.mark.parametrize("flip", [np.diag([1.0, 1, -1]), np.diag([-1.0, 1, 1]), np.diag([1.0, -1, 1])])
def test_flipped_axes_keep_every_voxel_at_its_physical_position(tmp_path, flip):
    """DICOM has no left-handed grids: a reader gets the right-handed twin (k reversed) of a flipped grid,
    with every voxel at the same physical position."""
    image, _ = phantom(flip)
    write_dicom_series(image, tmp_path / "s")
    back = read_image(tmp_path / "s")
    assert np.linalg.det(back.direction) == pytest.approx(1.0)
    np.testing.assert_array_equal(back.array, image.array[::-1])
    np.testing.assert_allclose(back.origin, index_to_physical(image, [0, 0, SIZE[2] - 1]), atol=1e-4)
    np.testing.assert_array_equal(resample_to(back, image, is_label=True).array, image.array)


def test_slices_are_sorted_by_position_not_by_file_name(tmp_path):
    image, _ = phantom()
    files = write_dicom_series(image, tmp_path / "s")
    order = np.random.default_rng(0).permutation(len(files))
    for f, n in zip(files, order):
        f.rename(f.with_name(f"x{n:03d}.dcm"))
    back = read_image(tmp_path / "s")
    np.testing.assert_array_equal(back.array, image.array)
    assert_same_geometry(back, image)


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (0.5, -1024.0), (2.0, 0.0)])
def test_rescale_slope_and_intercept_are_applied(tmp_path, slope, intercept):
    image, _ = phantom(np.eye(3))
    write_dicom_series(image, tmp_path / "s", rescale=(slope, intercept))
    back = read_image(tmp_path / "s")
    expected = np.rint((image.array - intercept) / slope) * slope + intercept
    np.testing.assert_allclose(back.array, expected)
    assert back.array.dtype in (np.float32, np.int16, np.int32)


def test_rescale_that_does_not_fit_16_bits_is_refused(tmp_path):
    image, _ = phantom(np.eye(3))
    with pytest.raises(ClarasegError, match="16-bit"):
        write_dicom_series(image, tmp_path / "s", rescale=(0.01, 0.0))


def test_several_series_need_a_choice(tmp_path):
    a, _ = phantom(np.eye(3), seed=1)
    b, _ = phantom(ORIENTATIONS["coronal"], seed=2)
    write_dicom_series(a, tmp_path / "study" / "one", series_description="portal venous")
    write_dicom_series(b, tmp_path / "study" / "two", series_description="arterial",
                       series_uid="1.2.826.0.1.3680043.8.498.42")
    with pytest.raises(DicomError, match="holds 2 DICOM series") as e:
        read_image(tmp_path / "study")
    assert "arterial" in str(e.value) and "portal venous" in str(e.value)  # the listing helps choose
    series = list_dicom_series(tmp_path / "study")
    assert len(series) == 2 and all(len(f) == SIZE[2] for f in series.values())
    got = read_image(tmp_path / "study", series_uid="1.2.826.0.1.3680043.8.498.42")
    np.testing.assert_array_equal(got.array, b.array)
    assert got.metadata["series_description"] == "arterial"
    other = next(uid for uid in series if uid != "1.2.826.0.1.3680043.8.498.42")
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "study", series_uid=other).array, a.array)
    with pytest.raises(DicomError, match="no series with UID '9.9'"):
        read_image(tmp_path / "study", series_uid="9.9")


def test_two_series_in_one_flat_folder(tmp_path):
    a, _ = phantom(np.eye(3), seed=1)
    write_dicom_series(a, tmp_path / "x", series_uid="1.2.3.1")
    write_dicom_series(a, tmp_path / "y", series_uid="1.2.3.2")
    flat = tmp_path / "flat"
    flat.mkdir()
    for d in ("x", "y"):
        for f in (tmp_path / d).iterdir():
            f.rename(flat / f"{d}{f.name}")
    with pytest.raises(DicomError, match="choose one by its series UID"):
        read_image(flat)
    np.testing.assert_array_equal(read_image(flat, series_uid="1.2.3.2").array, a.array)


def test_empty_and_non_dicom_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no DICOM series found"):
        read_image(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "junk" / "notes.txt").write_text("not an image")
    with pytest.raises(DicomError, match="no DICOM series found"):
        read_image(tmp_path / "junk")


def test_missing_slice_is_reported(tmp_path):
    image, _ = phantom()
    files = write_dicom_series(image, tmp_path / "s")
    files[4].unlink()
    with pytest.raises(DicomError, match="slices are missing") as e:
        read_image(tmp_path / "s")
    assert "slice0003.dcm" in str(e.value)  # the gap follows this file


def test_duplicated_slice_is_reported(tmp_path):
    image, _ = phantom()
    files = write_dicom_series(image, tmp_path / "s")
    shutil.copy(files[4], tmp_path / "s" / "copy.dcm")
    with pytest.raises(DicomError, match="duplicated slice") as e:
        read_image(tmp_path / "s")
    assert "copy.dcm" in str(e.value)


def test_truncated_slice_is_a_dicom_error(tmp_path):
    image, _ = phantom()
    files = write_dicom_series(image, tmp_path / "s")
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomError):
        read_image(tmp_path / "s")


def test_single_slice_series_is_a_one_slice_volume(tmp_path):
    image, _ = make_phantom(seed=2, size_ijk=(16, 12, 1), spacing=(1.0, 1.0, 2.0), direction=np.eye(3))
    write_dicom_series(image, tmp_path / "s")
    back = read_image(tmp_path / "s")
    assert back.size_ijk == (16, 12, 1)
    np.testing.assert_array_equal(back.array, image.array)
