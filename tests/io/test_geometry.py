"""Geometry against SimpleITK's own index <-> physical transforms, on oblique and flipped grids."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from claraseg.errors import GeometryMismatchError, InvalidImageError, InvalidPointsError
from claraseg.io import (
    Image,
    apply_matrix,
    bounding_box,
    box_to_physical,
    check_points_inside,
    crop,
    index_to_physical,
    lps_to_ras,
    make_phantom,
    paste,
    physical_box_to_index,
    physical_to_index,
    ras_to_lps,
    resample_to,
    resample_to_spacing,
    to_sitk,
    world_to_ijk_matrix,
    world_to_voxel,
)
from claraseg.io.phantom import random_direction


def rotation(axis, angle_deg) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


#: Oblique, flipped (left-handed) and permuted grids.
DIRECTIONS = {
    "identity": np.eye(3),
    "oblique": rotation([1, 2, 3], 27),
    "flip_i": np.diag([-1.0, 1, 1]),
    "flip_jk": np.diag([1.0, -1, -1]),
    "oblique_flipped": rotation([0.3, -1, 0.5], -41) @ np.diag([1.0, -1, 1]),
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=np.float64),
}


def grid(direction, size=(7, 5, 4), spacing=(0.7, 1.3, 2.9), origin=(-12.5, 33.0, 101.25), dtype=np.float32):
    a = np.arange(int(np.prod(size)), dtype=dtype).reshape(size[::-1])
    return Image(a, origin, spacing, direction)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_index_to_physical_matches_simpleitk(name):
    image = grid(DIRECTIONS[name])
    ref = to_sitk(image)
    rng = np.random.default_rng(0)
    cont = rng.uniform(-2, 8, size=(20, 3))
    ours = index_to_physical(image, cont)
    theirs = np.array([ref.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in cont])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    ints = rng.integers(0, 4, size=(10, 3))
    theirs = np.array([ref.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in ints])
    np.testing.assert_allclose(index_to_physical(image, ints), theirs, atol=1e-9)
    back = np.array([ref.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in ours])
    np.testing.assert_allclose(physical_to_index(image, ours), back, atol=1e-9)
    np.testing.assert_allclose(back, cont, atol=1e-9)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_ras_is_lps_with_x_and_y_negated(name):
    image = grid(DIRECTIONS[name])
    ijk = np.array([[0, 0, 0], [6, 4, 3], [1.5, 2.25, -0.5]])
    lps = index_to_physical(image, ijk)
    ras = index_to_physical(image, ijk, ras=True)
    np.testing.assert_allclose(ras, lps * [-1, -1, 1])
    np.testing.assert_allclose(lps_to_ras(lps), ras)
    np.testing.assert_allclose(ras_to_lps(ras), lps)
    np.testing.assert_allclose(physical_to_index(image, ras, ras=True), ijk, atol=1e-9)
    np.testing.assert_allclose(image.ijk_to_ras @ [6, 4, 3, 1], [*ras[1], 1])


@pytest.mark.parametrize("name", ["oblique", "oblique_flipped"])
def test_world_to_ijk_with_parent_transform(name):
    image = grid(DIRECTIONS[name])
    # A parent transform (node -> world, RAS) as Slicer composes them: a rotation and a translation.
    parent = np.eye(4)
    parent[:3, :3] = rotation([0, 1, 1], 15)
    parent[:3, 3] = [10.0, -20.0, 5.0]
    ijk = np.array([[0, 0, 0], [6, 4, 3], [3, 1, 2]])
    node_ras = index_to_physical(image, ijk, ras=True)
    world_ras = apply_matrix(parent, node_ras)
    m = world_to_ijk_matrix(image, np.linalg.inv(parent))
    np.testing.assert_allclose(apply_matrix(m, world_ras), ijk, atol=1e-9)
    np.testing.assert_array_equal(world_to_voxel(image, world_ras, np.linalg.inv(parent)), ijk)
    # Ignoring the parent transform (the AIAA bug) lands elsewhere.
    assert not np.allclose(apply_matrix(world_to_ijk_matrix(image), world_ras), ijk, atol=0.5)
    # LPS world points: the same matrix with the flip applied on the world side.
    m_lps = world_to_ijk_matrix(image, ras=False)
    np.testing.assert_allclose(apply_matrix(m_lps, index_to_physical(image, ijk)), ijk, atol=1e-9)


def test_world_to_voxel_rejects_outside_points_and_bad_matrices():
    image = grid(np.eye(3))
    far = index_to_physical(image, [50, 0, 0], ras=True)
    with pytest.raises(InvalidPointsError, match="outside the volume"):
        world_to_voxel(image, far)
    with pytest.raises(GeometryMismatchError, match="4x4"):
        world_to_ijk_matrix(image, np.eye(3))
    with pytest.raises(InvalidPointsError, match="NaN"):
        world_to_voxel(image, [np.nan, 0, 0])
    with pytest.raises(InvalidPointsError, match=r"\[i, j, k\]"):
        check_points_inside((7, 5, 4), [[1, 2]])
    assert check_points_inside((7, 5, 4), []).shape == (0, 3)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_box_corners_match_simpleitk_and_round_trip(name):
    image = grid(DIRECTIONS[name])
    ref = to_sitk(image)
    start, stop = np.array([1, 0, 2]), np.array([5, 3, 4])
    corners = box_to_physical(image, start, stop)
    expected = np.array([ref.TransformContinuousIndexToPhysicalPoint([float(v) for v in c])
                         for c in [[x, y, z] for x in (0.5, 4.5) for y in (-0.5, 2.5) for z in (1.5, 3.5)]])
    np.testing.assert_allclose(corners, expected, atol=1e-9)
    s, e = physical_box_to_index(image, corners)
    np.testing.assert_array_equal(s, start)
    np.testing.assert_array_equal(e, stop)
    s, e = physical_box_to_index(image, lps_to_ras(corners), ras=True)
    np.testing.assert_array_equal([s, e], [start, stop])
    # One voxel centre gives a one-voxel box; clipping keeps boxes inside the volume.
    s, e = physical_box_to_index(image, index_to_physical(image, [[3, 2, 1]]))
    assert s.tolist() == [3, 2, 1] and e.tolist() == [4, 3, 2]
    s, e = physical_box_to_index(image, box_to_physical(image, [-3, -3, -3], [20, 20, 20]))
    assert s.tolist() == [0, 0, 0] and e.tolist() == list(image.size_ijk)


finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    axis=st.tuples(finite, finite, finite).filter(lambda v: np.linalg.norm(v) > 1e-3),
    angle=st.floats(-180, 180),
    flips=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    spacing=st.tuples(*[st.floats(0.05, 20)] * 3),
    origin=st.tuples(finite, finite, finite),
    ijk=st.lists(st.tuples(*[st.floats(-50, 300)] * 3), min_size=1, max_size=5),
)
def test_property_round_trip_and_simpleitk_agreement(axis, angle, flips, spacing, origin, ijk):
    direction = rotation(axis, angle) @ np.diag(flips)
    image = Image(np.zeros((2, 2, 2), np.uint8), origin, spacing, direction)
    ijk = np.asarray(ijk)
    for ras in (False, True):
        xyz = index_to_physical(image, ijk, ras=ras)
        np.testing.assert_allclose(physical_to_index(image, xyz, ras=ras), ijk, atol=1e-6)
    ref = to_sitk(image)
    theirs = np.array([ref.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk])
    np.testing.assert_allclose(index_to_physical(image, ijk), theirs, rtol=1e-9, atol=1e-6)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**31),
    start=st.tuples(*[st.integers(-4, 10)] * 3),
    extent=st.tuples(*[st.integers(1, 8)] * 3),
)
def test_property_box_round_trip(seed, start, extent):
    rng = np.random.default_rng(seed)
    image = Image(np.zeros((9, 8, 7), np.uint8), rng.normal(0, 50, 3), rng.uniform(0.3, 5, 3),
                  random_direction(rng, 180.0))
    stop = np.add(start, extent)
    s, e = physical_box_to_index(image, box_to_physical(image, start, stop), clip=False)
    assert s.tolist() == list(start) and e.tolist() == stop.tolist()


def test_crop_pad_paste_round_trip(phantom_pair):
    image, label = phantom_pair
    start, stop = np.array([-5, 10, 20]), np.array([30, 70, 40])  # past the volume on three sides
    c = crop(label, start, stop, pad_value=0)
    assert c.size_ijk == tuple((stop - start).tolist())
    assert c.array.dtype == label.array.dtype and c.labels == label.labels
    # Every voxel keeps its physical position.
    np.testing.assert_allclose(index_to_physical(c, [0, 0, 0]), index_to_physical(label, start), atol=1e-9)
    np.testing.assert_allclose(index_to_physical(c, [7, 3, 2]), index_to_physical(label, start + [7, 3, 2]),
                               atol=1e-9)
    assert np.all(c.array[:, :, :5] == 0)  # the padded part (i < 0)
    assert np.all(c.array[12:] == 0)  # k >= 32
    np.testing.assert_array_equal(c.array[:12, :54, 5:], label.array[20:32, 10:64, 0:30])
    back = paste(np.zeros_like(label.array), c.array, start)
    inside = np.zeros_like(label.array, dtype=bool)
    inside[20:32, 10:64, 0:30] = True
    np.testing.assert_array_equal(back[inside], label.array[inside])
    assert not back[~inside].any()
    # Crop with padding of an image uses the given value; the crop's grid matches resample_to's.
    ci = crop(image, start, stop, pad_value=-1024)
    assert ci.array[0, 0, 0] == -1024
    np.testing.assert_array_equal(resample_to(label, c, is_label=True).array, c.array)
    with pytest.raises(InvalidImageError, match="empty crop box"):
        crop(image, [5, 5, 5], [5, 9, 9])


def test_paste_clips_outside_and_bounding_box():
    into = np.zeros((4, 5, 6), np.uint8)
    paste(into, np.ones((3, 3, 3), np.uint8), [4, -1, 2])  # i 4..6 (clipped at 6), j -1..1 (clipped at 0)
    assert into.sum() == 2 * 2 * 2
    assert bounding_box(into).__class__ is tuple
    s, e = bounding_box(into)
    assert s.tolist() == [4, 0, 2] and e.tolist() == [6, 2, 4]
    s, e = bounding_box(into, margin=1)
    assert s.tolist() == [3, 0, 1] and e.tolist() == [6, 3, 4]
    assert bounding_box(np.zeros((2, 2, 2))) is None


def test_resample_label_nearest_keeps_values_and_dtype(phantom_pair):
    _, label = phantom_pair
    lab16 = label.with_array(label.array.astype(np.uint16) * 300)  # values 300..2100: not uint8
    # A grid of half the spacing aligned so every other voxel centre coincides with the original's.
    fine = Image(np.zeros((63, 127, 127), np.uint8), label.origin, label.spacing / 2, label.direction)
    up = resample_to(lab16, fine, is_label=True)
    assert up.array.dtype == np.uint16
    assert set(np.unique(up.array)) <= set(np.unique(lab16.array))
    np.testing.assert_array_equal(up.array[::2, ::2, ::2], lab16.array)
    down = resample_to(up, lab16, is_label=True)
    np.testing.assert_array_equal(down.array, lab16.array)
    assert down.labels == label.labels


def test_resample_image_linear_is_exact_on_a_linear_ramp():
    src = grid(DIRECTIONS["oblique"], size=(30, 28, 26), spacing=(1.0, 1.2, 1.5), origin=(0, 0, 0))
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in src.array.shape], indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3)
    ramp = index_to_physical(src, ijk) @ [0.5, -2.0, 1.0]  # a linear function of the physical position
    src = src.with_array(ramp.reshape(src.array.shape).astype(np.float32))
    # Target: another oblique, flipped grid well inside the source.
    centre = index_to_physical(src, np.array(src.size_ijk) / 2 - 0.5)
    d = DIRECTIONS["oblique_flipped"]
    sp = np.array([0.9, 1.1, 1.3])
    tgt = Image(np.zeros((8, 8, 8), np.uint8), centre - d @ (sp * 3.5), sp, d)
    out = resample_to(src, tgt)
    assert out.array.dtype == np.float32 and out.same_grid(tgt)
    kk, jj, ii = np.meshgrid(*[np.arange(8)] * 3, indexing="ij")
    want = index_to_physical(tgt, np.stack([ii, jj, kk], -1).reshape(-1, 3)) @ [0.5, -2.0, 1.0]
    np.testing.assert_allclose(out.array.ravel(), want, atol=1e-3)


def test_resample_to_spacing_keeps_centre_and_values(ct_pair):
    image, label = ct_pair
    centre = index_to_physical(image, (np.array(image.size_ijk) - 1) / 2)
    small = resample_to_spacing(image, [4.5, 4.5, 6.0])
    np.testing.assert_allclose(small.spacing, [4.5, 4.5, 6.0])
    assert small.size_ijk == (81, 67, 56)
    np.testing.assert_allclose(index_to_physical(small, (np.array(small.size_ijk) - 1) / 2), centre, atol=1.6)
    assert small.array.dtype == np.float32
    # Linear interpolation stays within the source's range.
    assert image.array.min() <= small.array.min() and small.array.max() <= image.array.max()
    lab = resample_to_spacing(label, [4.5, 4.5, 6.0])
    assert lab.array.dtype == label.array.dtype and lab.same_grid(small)
    assert set(np.unique(lab.array)) <= set(np.unique(label.array))
    # Liver volume (ml) is preserved within a few percent.
    liver = [v for v, info in label.labels.items() if info.name == "liver"][0]
    ml = lambda im: float((im.array == liver).sum() * np.prod(im.spacing) / 1000)  # noqa: E731
    assert ml(lab) == pytest.approx(ml(label), rel=0.05)
    assert resample_to_spacing(image, image.spacing) is image
    with pytest.raises(InvalidImageError, match="positive"):
        resample_to_spacing(image, [0, 1, 1])


def test_check_same_grid_says_how_grids_differ(phantom_pair):
    image, label = phantom_pair
    image.check_same_grid(label)
    moved = Image(label.array, label.origin + [5, 0, 0], label.spacing, label.direction)
    with pytest.raises(GeometryMismatchError, match=r"origin .* vs .*resample_to"):
        image.check_same_grid(moved)
    other = Image(label.array, label.origin, label.spacing * [1, 1, 2], np.eye(3))
    with pytest.raises(GeometryMismatchError) as e:
        image.check_same_grid(other, what="segmentation")
    msg = str(e.value)
    assert "segmentation" in msg and "spacing" in msg and "direction" in msg and "origin" not in msg
    cropped = crop(label, [0, 0, 0], [10, 10, 10])
    with pytest.raises(GeometryMismatchError, match=r"size \(i, j, k\) \(64, 64, 32\) vs \(10, 10, 10\)"):
        image.check_same_grid(cropped)


def test_sample_ct_geometry_matches_simpleitk(data_dir):
    path = data_dir / "ct_abdomen_3mm" / "image.nii.gz"
    from claraseg.io import read_image

    image = read_image(path)
    ref = sitk.ReadImage(str(path))
    assert image.size_ijk == ref.GetSize()
    for ijk in ([0, 0, 0], [121, 100, 111], [60, 7, 99]):
        np.testing.assert_allclose(index_to_physical(image, ijk), ref.TransformIndexToPhysicalPoint(ijk), atol=1e-6)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))


def test_phantom_grid_with_random_orientation_round_trips():
    image, _ = make_phantom(seed=11, size_ijk=(20, 18, 10))
    ijk = np.array([[0, 0, 0], [19, 17, 9], [4.5, 3.25, 8.0]])
    np.testing.assert_allclose(physical_to_index(image, index_to_physical(image, ijk)), ijk, atol=1e-9)
