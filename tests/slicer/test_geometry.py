"""World <-> voxel conversions, parent transforms, slice axes and boxes (ClaraAnnotateLib.geometry)."""

from __future__ import annotations

import numpy as np
import pytest
from ClaraAnnotateLib import geometry as g

from claraseg.errors import GeometryMismatchError, InvalidPointsError
from claraseg.io import Image, MaskDelta, world_to_ijk_matrix


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    m = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
         "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    return np.array(m, dtype=np.float64)


def tilted_image(size=(20, 30, 10)) -> Image:
    direction = rotation("z", 30) @ rotation("x", 12)
    return Image(np.zeros(size[::-1], np.int16), origin=[-40.0, 12.5, 7.0], spacing=[0.8, 1.1, 3.0],
                 direction=direction)


def homogeneous(r: np.ndarray, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = t
    return m


def slice_to_ras(normal_dir: np.ndarray, in_plane: np.ndarray, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    n = normal_dir / np.linalg.norm(normal_dir)
    x = in_plane - (in_plane @ n) * n
    x /= np.linalg.norm(x)
    y = np.cross(n, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, n, origin
    return m


def test_ijk_to_ras_round_trip_matches_claraseg_geometry():
    img = tilted_image()
    origin, spacing, direction = g.image_geometry_from_ijk_to_ras(img.ijk_to_ras)
    np.testing.assert_allclose(origin, img.origin)
    np.testing.assert_allclose(spacing, img.spacing)
    np.testing.assert_allclose(direction, img.direction, atol=1e-12)
    again = g.image_from_array(img.array, img.ijk_to_ras)
    assert again.same_grid(img)


def test_world_to_ijk_includes_parent_transforms():
    img = tilted_image()
    # Two nested parent transforms: volume frame -> parent -> world.
    inner = homogeneous(rotation("y", 20), (5.0, -3.0, 2.0))
    outer = homogeneous(rotation("z", -35), (-10.0, 4.0, 30.0))
    volume_to_world = outer @ inner
    m = g.world_to_ijk(img.ijk_to_ras, np.linalg.inv(volume_to_world))
    np.testing.assert_allclose(m, world_to_ijk_matrix(img, np.linalg.inv(volume_to_world)), atol=1e-12)
    ijk = np.array([[3, 7, 2], [19, 29, 9], [0, 0, 0]])
    world = (volume_to_world @ img.ijk_to_ras @ np.c_[ijk, np.ones(3)].T).T[:, :3]
    np.testing.assert_array_equal(g.world_points_to_ijk(world, m, img.size_ijk), ijk)
    # Ignoring the parent transform (what AIAA and MONAI Label do) lands elsewhere.
    wrong = np.rint((np.linalg.inv(img.ijk_to_ras) @ np.c_[world, np.ones(3)].T).T[:, :3])
    assert np.any(wrong != ijk)


def test_points_outside_the_volume_are_a_typed_error():
    img = tilted_image()
    m = g.world_to_ijk(img.ijk_to_ras)
    far = (img.ijk_to_ras @ [100, 0, 0, 1])[:3]
    with pytest.raises(InvalidPointsError, match="outside the volume"):
        g.world_points_to_ijk([far], m, img.size_ijk, "click")
    with pytest.raises(GeometryMismatchError):
        g.world_to_ijk(np.eye(3))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_axis_for_views_aligned_with_a_tilted_volume(axis):
    img = tilted_image()
    w2i = g.world_to_ijk(img.ijk_to_ras)
    # A view whose normal is the gradient of voxel index `axis` shows index-`axis` slices.
    normal = w2i[axis, :3]
    other = img.ijk_to_ras[:3, (axis + 1) % 3]
    assert g.slice_axis(slice_to_ras(normal, other), w2i) == axis
    assert g.slice_axis(slice_to_ras(-normal, other), w2i) == axis  # flipped view


def test_slice_axis_under_a_parent_transform():
    img = Image(np.zeros((10, 20, 30), np.int16))  # identity LPS geometry
    parent = homogeneous(rotation("x", 90))  # turns the volume's k axis to point along -A/P in world
    w2i = g.world_to_ijk(img.ijk_to_ras, np.linalg.inv(parent))
    axial = slice_to_ras(np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]))
    coronal = slice_to_ras(np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]))
    # Without the transform an axial view would cut k; with it, it cuts j, and the coronal view cuts k.
    assert g.slice_axis(axial, g.world_to_ijk(img.ijk_to_ras)) == 2
    assert g.slice_axis(axial, w2i) == 1
    assert g.slice_axis(coronal, w2i) == 2


def test_slightly_oblique_views_snap_and_truly_oblique_ones_raise():
    img = Image(np.zeros((10, 20, 30), np.int16))
    w2i = g.world_to_ijk(img.ijk_to_ras)
    axial = np.array([0.0, 0.0, 1.0])
    tilt3 = rotation("x", 3) @ axial
    assert g.slice_axis(slice_to_ras(tilt3, np.array([1.0, 0.0, 0.0])), w2i) == 2
    tilt20 = rotation("x", 20) @ axial
    with pytest.raises(g.ObliqueSliceError, match="20.0 degrees oblique"):
        g.slice_axis(slice_to_ras(tilt20, np.array([1.0, 0.0, 0.0])), w2i)
    assert g.slice_axis(slice_to_ras(tilt20, np.array([1.0, 0.0, 0.0])), w2i, tolerance_deg=25) == 2


def test_pick_slice_view_finds_the_plane_holding_the_point():
    red = slice_to_ras(np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), (0.0, 0.0, 12.0))
    green = slice_to_ras(np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]), (0.0, -5.0, 0.0))
    views = {"Red": red, "Green": green}
    assert g.pick_slice_view(views, [3.0, 40.0, 12.2], 0.5) == "Red"
    assert g.pick_slice_view(views, [3.0, -5.0, 30.0], 0.5) == "Green"
    assert g.pick_slice_view(views, [3.0, -5.0, 12.0], 0.5, preferred="Green") == "Green"
    assert g.pick_slice_view(views, [3.0, 9.0, 1.0], 0.5) is None


def test_volume_to_segmentation_geometry_and_extent():
    img = tilted_image()
    to_seg = homogeneous(rotation("z", 10), (1.0, 2.0, 3.0))
    np.testing.assert_allclose(g.volume_ijk_to_segmentation(img.ijk_to_ras, to_seg), to_seg @ img.ijk_to_ras)
    np.testing.assert_allclose(g.volume_ijk_to_segmentation(img.ijk_to_ras), img.ijk_to_ras)
    d = MaskDelta((2, 3, 4), (5, 9, 6), np.ones((2, 6, 3), np.uint8), (20, 30, 10))
    assert g.vtk_extent(d) == [2, 4, 3, 8, 4, 5]


def test_2d_clicks_must_share_a_slice_and_extreme_point_counts():
    assert g.check_same_slice(np.array([[1, 2, 7], [4, 5, 7]]), 2) == 7
    with pytest.raises(InvalidPointsError, match="k = \\[7, 8\\]"):
        g.check_same_slice(np.array([[1, 2, 7], [4, 5, 8]]), 2)
    assert g.extreme_point_count_message(6, 6) is None
    assert "place 2 more extreme points" in g.extreme_point_count_message(4, 6)
    assert "place 1 more extreme point " in g.extreme_point_count_message(5, 6)
