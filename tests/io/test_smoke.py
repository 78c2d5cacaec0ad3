import numpy as np

from claraseg.io import MaskDelta, read_image


def test_reads_sample_ct(ct_pair):
    image, label = ct_pair
    assert image.size_ijk == (122, 101, 112)
    assert image.same_grid(label)
    assert label.labels[1].name == "spleen"
    assert int((label.array == 1).sum()) == 9668


def test_maskdelta_roundtrip_on_phantom(phantom_pair):
    _, label = phantom_pair
    delta = MaskDelta.from_full((label.array == 1).astype(np.uint8))
    back = MaskDelta.decode(delta.encode())
    assert np.array_equal(back.to_full(), (label.array == 1).astype(np.uint8))


def test_missing_file_is_a_clear_error(tmp_path):
    import pytest

    from claraseg.errors import ImageReadError

    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.nii.gz")
