"""Domain randomisation of the interactive models' training samples (claraseg.models.synth) and the
cut fields of view: deterministic given the seed, the truth untouched, thick slices really coarser."""

from __future__ import annotations

import numpy as np
import pytest

from claraseg.errors import TrainingDataError
from claraseg.io import make_phantom
from claraseg.models.defaults import SETTINGS
from claraseg.models.synth import domain_randomize, simulate_resolution, synthesize_contrast
from claraseg.models.train_config import check_train_config
from claraseg.models.training import cut_field_of_view, make_sample, volume_from_images


@pytest.fixture(scope="module")
def phantom_volume():
    image, label = make_phantom(seed=3, size_ijk=(64, 64, 32))
    return volume_from_images("p", image, label, SETTINGS["deepgrow3d"]["intensity"], min_voxels=60, modality="CT")


def test_synthetic_contrast_follows_the_label_map_and_is_seeded():
    rng = np.random.default_rng(0)
    label = np.zeros((16, 16, 16), np.int16)
    label[4:12, 4:12, 4:12] = 3
    img = rng.random((16, 16, 16)).astype(np.float32) * 0.05
    a = synthesize_contrast(img, label, np.random.default_rng(1))
    b = synthesize_contrast(img, label, np.random.default_rng(1))
    assert np.array_equal(a, b) and a.dtype == np.float32
    c = synthesize_contrast(img, label, np.random.default_rng(2))
    assert abs(float(a[label == 3].mean()) - float(c[label == 3].mean())) > 1e-3  # a new contrast per draw
    out = domain_randomize(img, label, [1.0, 1.0, 1.0], np.random.default_rng(5), p_contrast=1.0)
    assert out.shape == img.shape and np.isfinite(out).all() and out.min() > -0.3 and out.max() <= 1.5


def test_thick_slices_remove_detail_along_one_axis_only():
    img = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    for seed in range(5):
        # 8 mm slices on a 1 mm ROI: consecutive planes along the chosen axis become nearly alike.
        out = simulate_resolution(img, [1.0, 1.0, 1.0], np.random.default_rng(seed), thickness_mm=(8.0, 8.0),
                                  p_in_plane=0.0)
        steps = sorted(float(np.abs(np.diff(out, axis=a)).mean()) for a in range(3))
        assert steps[0] < 0.25 * steps[1] and steps[1] == pytest.approx(steps[2], rel=0.2)


def test_cut_field_of_view_keeps_part_of_the_structure_inside(phantom_volume):
    vol = phantom_volume
    st = max(vol.structures, key=lambda s: len(s.coords))
    cut_any = False
    for seed in range(10):
        v, s = cut_field_of_view(vol, st, np.random.default_rng(seed))
        assert len(s.coords) >= 30 and len(s.coords) <= len(st.coords)
        assert np.all(s.coords >= 0) and np.all(s.coords < np.array(v.image.shape[::-1]))
        assert np.all(np.isin(v.label[s.coords[:, 2], s.coords[:, 1], s.coords[:, 0]], st.values))
        cut_any |= len(s.coords) < len(st.coords)
    assert cut_any


def test_samples_with_domain_randomization(phantom_volume):
    settings = dict(SETTINGS["deepgrow3d"], train_roi_size=[32, 32, 32], roi_size=[32, 32, 32])
    rng = np.random.default_rng(7)
    made = 0
    for _ in range(12):
        r = make_sample("deepgrow3d", phantom_volume, phantom_volume.structures[0], settings, rng, None,
                        {"domain_randomization": True})
        if r is not None:
            x, y = r
            assert tuple(x.shape) == (4, 32, 32, 32) and tuple(y.shape) == (1, 32, 32, 32)
            assert set(np.unique(y.numpy())) <= {0.0, 1.0} and np.isfinite(x.numpy()).all()
            made += 1
    assert made >= 6
    with pytest.raises(TrainingDataError, match="domain_randomization"):
        check_train_config({"domain_randomization": "yes"})
