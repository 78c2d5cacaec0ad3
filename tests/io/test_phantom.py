"""Synthetic CT phantoms: reproducible, exact labels, plausible intensities, varied grids."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from claraseg.io import make_phantom
from claraseg.io.phantom import ORGANS


def test_same_seed_same_phantom_other_seed_other_phantom():
    a_img, a_lab = make_phantom(seed=7, size_ijk=(32, 30, 16))
    b_img, b_lab = make_phantom(seed=7, size_ijk=(32, 30, 16))
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_lab.array, b_lab.array)
    assert a_img.same_grid(b_img) and a_lab.same_grid(a_img)
    c_img, c_lab = make_phantom(seed=8, size_ijk=(32, 30, 16))
    assert not np.array_equal(a_lab.array, c_lab.array)
    assert not np.allclose(a_img.direction, c_img.direction)


def test_labels_are_the_exact_occupancy_of_physical_shapes():
    """The label of a voxel depends only on the physical position of its centre: a grid of half the
    spacing, centred on the same point, agrees with the coarse grid at every shared voxel centre."""
    d = np.eye(3)
    _, coarse = make_phantom(seed=5, size_ijk=(41, 41, 21), spacing=(8.0, 8.0, 12.0), direction=d)
    _, fine = make_phantom(seed=5, size_ijk=(81, 81, 41), spacing=(4.0, 4.0, 6.0), direction=d)
    np.testing.assert_allclose(fine.origin, coarse.origin)
    np.testing.assert_array_equal(fine.array[::2, ::2, ::2], coarse.array)
    # The fine grid sees the same organs with about the same volume.
    for value in coarse.labels:
        v_coarse = (coarse.array == value).sum() * np.prod(coarse.spacing)
        v_fine = (fine.array == value).sum() * np.prod(fine.spacing)
        assert abs(v_fine - v_coarse) < 0.25 * v_coarse + 2 * np.prod(coarse.spacing), coarse.labels[value].name


def test_intensities_are_plausible_hounsfield_units(phantom_pair):
    image, label = phantom_pair
    a = image.array
    assert a.dtype == np.int16 and a.min() >= -1024 and a.max() <= 3071
    assert image.metadata["modality"] == "CT"
    assert np.median(a[label.array == 0][:200]) < -900  # corners are air
    expected = {o.name: o.hu for o in ORGANS}
    for value, info in label.labels.items():
        inside = ndimage.binary_erosion(label.array == value, iterations=1)
        if inside.sum() < 20:
            continue
        mean = float(a[inside].mean())
        assert abs(mean - expected[info.name]) < 40, (info.name, mean)
    # Noise: the interior of the liver is not flat.
    liver = ndimage.binary_erosion(label.array == 1, iterations=1)
    assert 5 < a[liver].std() < 60
    # Partial volume: border voxels lie between the organ and its surroundings.
    vertebra = label.array == 5
    border = vertebra & ~ndimage.binary_erosion(vertebra)
    assert a[border].mean() < a[ndimage.binary_erosion(vertebra)].mean()


def test_grids_are_anisotropic_and_randomly_oriented():
    dets, angles = [], []
    for seed in range(6):
        image, label = make_phantom(seed=seed, size_ijk=(24, 24, 12))
        assert image.spacing[2] > image.spacing[0] == image.spacing[1]
        d = image.direction
        np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)
        dets.append(np.linalg.det(d))
        angles.append(np.degrees(np.arccos(np.clip(abs(d[2, 2]), -1, 1))))
        assert label.labels[1].name == "liver" and label.array.dtype == np.uint8
        assert len(np.unique(label.array)) >= 4  # several structures in view whatever the orientation
    assert len({round(a, 3) for a in angles}) == 6 and max(angles) > 5
    assert min(dets) < 0 < max(dets)  # flipped (left-handed) grids occur too
    image, _ = make_phantom(seed=0, size_ijk=(24, 24, 12), oblique=False)
    np.testing.assert_array_equal(image.direction, np.eye(3))


def test_every_organ_is_present_on_an_axial_grid():
    _, label = make_phantom(seed=2, size_ijk=(64, 64, 32), oblique=False)
    present = {label.labels[int(v)].name for v in np.unique(label.array) if v}
    assert present == {o.name for o in ORGANS}
