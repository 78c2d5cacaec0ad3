"""NIfTI / NRRD / .seg.nrrd round trips: voxels, dtypes, label values, names, colours and geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from claraseg.errors import ImageWriteError
from claraseg.io import Image, LabelInfo, make_phantom, read_image, read_labels_json, write_image

FORMATS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")


def assert_same_geometry(a: Image, b: Image) -> None:
    np.testing.assert_allclose(a.origin, b.origin, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=1e-6)


def test_sample_ct_and_label(ct_pair, data_dir):
    image, label = ct_pair
    assert image.size_ijk == (122, 101, 112) and image.array.dtype == np.int32
    np.testing.assert_allclose(image.spacing, 3.0)
    assert -1300 < image.array.min() < -900 and image.array.max() > 1000  # Hounsfield units
    assert -1050 < np.median(image.array[:, :5, :5]) < -950  # air in the corners
    assert label.array.dtype == np.uint8 and label.is_label
    names = json.loads((data_dir / "ct_abdomen_3mm" / "labels.json").read_text())
    assert len(label.labels) == len(names) == 61
    # labels.json's voxel counts agree with the label map, value by value.
    values, counts = np.unique(label.array, return_counts=True)
    found = dict(zip(values.tolist(), counts.tolist()))
    for value, entry in names.items():
        assert found.get(int(value), 0) == entry["voxels"], entry["name"]
        assert label.labels[int(value)].name == entry["name"]


@pytest.mark.parametrize("ext", FORMATS)
def test_sample_label_round_trip_keeps_values_names_and_geometry(ct_pair, tmp_path, ext):
    _, label = ct_pair
    path = write_image(label, tmp_path / f"label{ext}")
    back = read_image(path)  # no label=True: the names stored with the file make it a label map
    assert back.is_label
    assert back.array.dtype == label.array.dtype
    np.testing.assert_array_equal(back.array, label.array)
    assert_same_geometry(back, label)
    assert {v: i.name for v, i in back.labels.items()} == {v: i.name for v, i in label.labels.items()}
    if ext in (".nii.gz", ".nii"):
        assert (tmp_path / "label.labels.json").is_file()  # NIfTI keeps names in a sidecar


def test_seg_nrrd_keeps_names_and_colours_in_slicer_fields(phantom_pair, tmp_path):
    _, label = phantom_pair
    path = write_image(label, tmp_path / "phantom.seg.nrrd")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert meta["Segment0_Name"] == "liver" and meta["Segment0_LabelValue"] == "1"
    assert meta["Segment0_Layer"] == "0"
    back = read_image(path)
    assert back.labels.keys() == label.labels.keys()
    for value, info in label.labels.items():
        assert back.labels[value].name == info.name
        np.testing.assert_allclose(back.labels[value].color, info.color, atol=1e-6)
    np.testing.assert_array_equal(back.array, label.array)
    assert_same_geometry(back, label)


def test_seg_nrrd_written_by_slicer_style_metadata_is_read(tmp_path):
    """A .seg.nrrd as Slicer writes it (segment ids, names, colours, label values not 1..n)."""
    a = np.zeros((4, 5, 6), np.uint8)
    a[1:3, 1:3, 1:3] = 7
    a[0, 0, 0] = 3
    img = sitk.GetImageFromArray(a)
    for key, value in {
        "Segment0_ID": "Segment_1", "Segment0_Name": "tumour", "Segment0_Color": "1 0 0", "Segment0_LabelValue": "7",
        "Segment0_Layer": "0", "Segment1_ID": "Segment_2", "Segment1_Name": "cyst", "Segment1_Color": "0 0.5 1",
        "Segment1_LabelValue": "3", "Segment1_Layer": "0",
    }.items():
        img.SetMetaData(key, value)
    sitk.WriteImage(img, str(tmp_path / "s.seg.nrrd"))
    back = read_image(tmp_path / "s.seg.nrrd")
    assert back.labels == {7: LabelInfo("tumour", (1.0, 0.0, 0.0)), 3: LabelInfo("cyst", (0.0, 0.5, 1.0))}
    np.testing.assert_array_equal(back.array, a)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64])
@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_integer_label_dtypes_and_values_survive(tmp_path, dtype, ext):
    info = np.iinfo(dtype)
    values = np.array([0, 1, 2, min(info.max, 300), info.max], dtype=np.int64)
    if info.min < 0:
        values = np.append(values, max(info.min, -5))
    a = np.resize(values, (3, 4, 5)).astype(dtype)
    label = Image(a, (1.5, -2.0, 3.0), (0.5, 0.6, 2.0), np.diag([1.0, -1.0, 1.0]),
                  {1: LabelInfo("a"), 2: LabelInfo("b", (0.1, 0.2, 0.3))}, {"is_label": True})
    back = read_image(write_image(label, tmp_path / f"l{ext}"), label=True)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, a)
    assert back.labels[1].name == "a" and back.labels[2].name == "b"
    assert_same_geometry(back, label)


@pytest.mark.parametrize("ext", FORMATS[:3] + (".mha",))
def test_oblique_flipped_image_round_trip_is_exact(tmp_path, ext):
    image, _ = make_phantom(seed=4, size_ijk=(20, 16, 8))
    assert np.linalg.det(image.direction) < 0 or not np.allclose(image.direction, np.eye(3))
    back = read_image(write_image(image, tmp_path / f"im{ext}"))
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, image.array)
    assert_same_geometry(back, image)
    assert not back.is_label and back.labels == {}


def test_float_image_round_trip(tmp_path):
    a = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    im = Image(a, spacing=(1, 2, 3))
    back = read_image(write_image(im, tmp_path / "f.nii.gz"))
    np.testing.assert_array_equal(back.array, a)


def test_boolean_mask_is_written_as_uint8(tmp_path):
    m = np.zeros((3, 4, 5), bool)
    m[1, 2, 3] = True
    back = read_image(write_image(Image(m), tmp_path / "m.nrrd"), label=True)
    assert back.array.dtype == np.uint8 and back.array.sum() == 1


def test_labels_json_formats(tmp_path):
    (tmp_path / "a.json").write_text('{"1": "spleen", "2": {"name": "liver", "color": [1, 0, 0]}}')
    assert read_labels_json(tmp_path / "a.json") == {1: LabelInfo("spleen"), 2: LabelInfo("liver", (1, 0, 0))}
    (tmp_path / "b.json").write_text('{"labels": {"3": "kidney"}}')
    assert read_labels_json(tmp_path / "b.json") == {3: LabelInfo("kidney")}


def test_write_errors(tmp_path, phantom_pair):
    image, _ = phantom_pair
    with pytest.raises(ImageWriteError, match="unknown image extension"):
        write_image(image, tmp_path / "x.png")
    with pytest.raises(ImageWriteError, match="does not exist"):
        write_image(image, tmp_path / "missing" / "x.nii.gz")
    with pytest.raises(ImageWriteError, match="unknown image extension '.nhdr'"):
        write_image(image, tmp_path / "x.nhdr")  # two-file formats cannot be written atomically
    nan = Image(np.full((2, 2, 2), np.nan, np.float32))
    with pytest.raises(ImageWriteError, match="NaN or infinite voxels as 0"):
        write_image(nan, tmp_path / "nan.nii.gz")
    # A failed write leaves no temporary file behind.
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_and_overwrites(tmp_path, phantom_pair):
    image, label = phantom_pair
    p = tmp_path / "x.nii.gz"
    write_image(image, p)
    write_image(label, p)
    assert read_image(p).is_label
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.labels.json", "x.nii.gz"]
    assert p.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not the temporary file's 0600
    # Overwriting with an image removes the label names that no longer belong to the file.
    write_image(image, p)
    assert not read_image(p).is_label
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.nii.gz"]


def current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
