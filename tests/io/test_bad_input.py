"""Bad input: every failure is a typed ClarasegError whose message names the file and what to do."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from claraseg.errors import ClarasegError, DicomError, ImageReadError, InvalidImageError
from claraseg.io import (
    Image,
    as_label_map,
    check_finite,
    make_phantom,
    read_image,
    write_dicom_series,
    write_image,
)


@pytest.fixture
def small_nii(tmp_path):
    image, _ = make_phantom(seed=0, size_ijk=(16, 16, 8))
    return write_image(image, tmp_path / "small.nii.gz")


def test_truncated_nifti(small_nii):
    data = small_nii.read_bytes()
    small_nii.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"small\.nii\.gz: the file is truncated"):
        read_image(small_nii)


def test_truncated_uncompressed_nifti_keeps_header(tmp_path):
    image, _ = make_phantom(seed=0, size_ijk=(16, 16, 8))
    p = write_image(image, tmp_path / "t.nii", compress=False)
    p.write_bytes(p.read_bytes()[:1000])  # the header is intact, the voxels are not
    with pytest.raises(ImageReadError, match=r"truncated .* \(1,000 of 4,4\d\d bytes\)"):
        read_image(p)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
@pytest.mark.parametrize("compress", [True, False])
def test_truncated_nrrd_and_metaimage(tmp_path, ext, compress):
    image, _ = make_phantom(seed=0, size_ijk=(16, 16, 8))
    p = write_image(image, tmp_path / f"t{ext}", compress=compress)
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(p)


@pytest.mark.parametrize("name", ["random.nii.gz", "random.nrrd", "random.seg.nrrd", "random.nii", "random.bin"])
def test_random_bytes(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ImageReadError, match=name.replace(".", r"\.")) as e:
        read_image(p)
    assert "Traceback" not in str(e.value) and "itk::" not in str(e.value)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ImageReadError, match="the file is empty"):
        read_image(tmp_path / "empty.nii.gz")


def test_gzip_of_garbage(tmp_path):
    (tmp_path / "g.nii.gz").write_bytes(gzip.compress(b"\x00" * 400))
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "g.nii.gz")


def test_2d_file_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.int16)), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(InvalidImageError, match="2D image.*3D volume is required"):
        read_image(tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30, 3), np.uint8), isVector=True),
                    str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InvalidImageError):
        read_image(tmp_path / "rgb.nrrd")


def test_4d_file_is_refused_unless_it_holds_one_volume(tmp_path):
    volumes = [sitk.GetImageFromArray(np.full((4, 5, 6), t, np.float32)) for t in range(3)]
    sitk.WriteImage(sitk.JoinSeries(volumes), str(tmp_path / "t.nii.gz"))
    with pytest.raises(InvalidImageError, match="4D image of size \\[6, 5, 4, 3\\]"):
        read_image(tmp_path / "t.nii.gz")
    one = np.arange(4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(one[0])]), str(tmp_path / "one.nii.gz"))
    image = read_image(tmp_path / "one.nii.gz")
    assert image.size_ijk == (6, 5, 4)
    np.testing.assert_array_equal(image.array, one[0])


def test_colour_image_is_refused(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(InvalidImageError, match="3 components per voxel"):
        read_image(tmp_path / "rgb.nii.gz")


def test_nan_image_is_refused_on_read_and_by_check_finite(tmp_path):
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    a[0, 0, 0] = np.inf
    p = write_image(Image(a), tmp_path / "nan.nrrd")  # (ITK's NIfTI I/O turns NaN into 0 by itself)
    with pytest.raises(InvalidImageError, match=r"nan\.nrrd: the image holds 2 NaN or infinite voxels"):
        read_image(p)
    assert np.isnan(read_image(p, allow_nonfinite=True).array).sum() == 1
    with pytest.raises(InvalidImageError, match="NaN"):
        check_finite(Image(a))
    with pytest.raises(InvalidImageError, match="NaN or infinite"):
        read_image(p, label=True)


def test_float_label_map_with_fractions(tmp_path):
    a = np.zeros((4, 5, 6), np.float32)
    a[1:3, 1:3, 1:3] = 0.7  # a probability map
    p = write_image(Image(a), tmp_path / "prob.nii.gz")
    with pytest.raises(InvalidImageError, match="8 voxels are fractional.*probability map"):
        read_image(p, label=True)
    a[...] = np.round(a) * 3  # whole numbers stored as floats are fine
    back = read_image(write_image(Image(a), tmp_path / "whole.nii.gz"), label=True)
    assert back.array.dtype == np.uint8 and set(np.unique(back.array)) == {0, 3}
    with pytest.raises(InvalidImageError, match="0..65535"):
        as_label_map(Image(np.full((2, 2, 2), -1.0)))


def _patch_nifti_dims(path, dims):
    """Rewrite an uncompressed NIfTI-1 header's dim[] field (offset 40, 8 x int16)."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<8h", data, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    path.write_bytes(bytes(data))


def test_absurd_sizes(tmp_path):
    p = write_image(Image(np.zeros((2, 2, 2), np.uint8)), tmp_path / "huge.nii", compress=False)
    _patch_nifti_dims(p, [3000, 3000, 3000])
    with pytest.raises(InvalidImageError, match="larger than the supported"):
        read_image(p)
    # A volume built in memory (broadcast, so nothing is allocated) is refused the same way.
    with pytest.raises(InvalidImageError, match="crop or downsample"):
        Image(np.broadcast_to(np.zeros(1, np.uint8), (2048, 1024, 1024)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing": (0, 1, 1)}, "spacing"),
        ({"spacing": (1, 1, 1e9)}, "spacing"),
        ({"origin": (np.nan, 0, 0)}, "NaN or infinite"),
        ({"direction": np.diag([1.0, 2.0, 1.0])}, "not orthonormal"),
        ({"direction": [[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]}, "not orthonormal"),
    ],
)
def test_bad_geometry(kwargs, match):
    with pytest.raises(InvalidImageError, match=match):
        Image(np.zeros((2, 2, 2)), **kwargs)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((3, 4)), "3D volume.*2D images"),
        (np.zeros((2, 3, 4, 5)), "4 dimensions"),
        (np.zeros((0, 3, 4)), "empty"),
        (np.array([[["a"]]]), "not supported"),
        (np.zeros((1, 1, 1), np.complex64), "not supported"),
    ],
)
def test_bad_arrays(array, match):
    with pytest.raises(InvalidImageError, match=match):
        Image(array)


def test_nonexistent_path_and_unreadable_dicom(tmp_path):
    with pytest.raises(ImageReadError, match="no such file or folder"):
        read_image(tmp_path / "missing" / "ct.nii.gz")
    image, _ = make_phantom(seed=0, size_ijk=(12, 10, 5))
    files = write_dicom_series(image, tmp_path / "dcm")
    for f in files:
        data = bytearray(f.read_bytes())
        f.write_bytes(bytes(data[:200]))  # headers cut short: no readable slice left
    with pytest.raises(DicomError, match="no DICOM series found"):
        read_image(tmp_path / "dcm")


def test_cli_turns_errors_into_one_line(tmp_path, capsys):
    from claraseg.cli import main

    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    assert main(["info", str(tmp_path / "bad.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("claraseg: error: ") and "bad.nii.gz" in err and "Traceback" not in err


def test_every_error_is_a_claraseg_error():
    for cls in (ImageReadError, DicomError, InvalidImageError):
        assert issubclass(cls, ClarasegError) and cls.http_status == 400
