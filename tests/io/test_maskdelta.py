"""MaskDelta: exact round trips, compactness, corrupt input, and pasting into label maps."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from claraseg.errors import MaskDeltaError
from claraseg.io import MaskDelta
from claraseg.io.maskdelta import _HEADER, MAGIC, VERSION


def organ_mask(size_ijk=(512, 512, 100), radii=(90, 70, 35), seed=0) -> np.ndarray:
    """A liver-sized smooth blob: a deformed ellipsoid in a [k, j, i] volume."""
    rng = np.random.default_rng(seed)
    ni, nj, nk = size_ijk
    kk, jj, ii = np.ogrid[:nk, :nj, :ni]
    c = np.array([ni * 0.4, nj * 0.45, nk * 0.5])
    q = ((ii - c[0]) / radii[0]) ** 2 + ((jj - c[1]) / radii[1]) ** 2 + ((kk - c[2]) / radii[2]) ** 2
    bump = 0.15 * np.sin(ii / 17.0 + rng.uniform(0, 6)) * np.cos(jj / 23.0) + 0.1 * np.sin(kk / 9.0)
    return (q + bump < 1).astype(np.uint8)


def test_binary_round_trip_is_exact(phantom_pair):
    _, label = phantom_pair
    for value in label.labels:
        full = (label.array == value).astype(np.uint8)
        delta = MaskDelta.from_full(full)
        back = MaskDelta.decode(delta.encode())
        assert back == delta
        np.testing.assert_array_equal(back.to_full(), full)
        assert back.image_size == label.size_ijk


def test_multi_label_round_trip_keeps_values_and_names(phantom_pair):
    _, label = phantom_pair
    names = {v: info.name for v, info in label.labels.items()}
    delta = MaskDelta.from_full(label.array, labels=names)
    data = delta.encode()
    back = MaskDelta.decode(data)
    assert back == delta and back.labels == names
    np.testing.assert_array_equal(back.to_full(), label.array)
    assert data[6] == 0  # byte per voxel: values above 1 cannot be bit-packed


def test_delta_between_two_masks_only_covers_the_change():
    old = np.zeros((20, 30, 40), np.uint8)
    old[5:10, 5:10, 5:10] = 1
    new = old.copy()
    new[12:14, 20:22, 30:35] = 1
    delta = MaskDelta.from_full(new, old)
    assert delta.start == (30, 20, 12) and delta.stop == (35, 22, 14)
    np.testing.assert_array_equal(MaskDelta.decode(delta.encode()).paste(old.copy()), new)


def test_empty_and_full_volume():
    size = (7, 6, 5)
    empty = MaskDelta.empty(size)
    assert empty.is_empty
    back = MaskDelta.decode(empty.encode())
    assert back.is_empty and back.image_size == size and back == empty
    target = np.full(size[::-1], 3, np.uint8)
    np.testing.assert_array_equal(back.paste(target.copy()), target)  # an empty delta changes nothing
    assert MaskDelta.from_full(np.zeros(size[::-1], np.uint8)).is_empty
    full = MaskDelta.from_full(np.ones(size[::-1], np.uint8))
    assert full.start == (0, 0, 0) and full.stop == size
    assert MaskDelta.decode(full.encode()) == full


def test_paste_with_value_into_a_multi_label_map():
    labels = np.zeros((4, 6, 8), np.uint16)
    labels[:, :, :4] = 5  # another structure
    labels[1:3, 1:5, 4:8] = 9  # the object before the click
    mask = np.zeros((4, 6, 8), np.uint8)
    mask[0:2, 2:6, 3:7] = 1  # the object after the click
    delta = MaskDelta.from_full(mask, (labels == 9).astype(np.uint8))
    out = delta.paste(labels.copy(), value=9)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out == 9, mask.astype(bool))  # exactly the new object
    untouched = ~mask.astype(bool) & (labels == 5)
    assert np.all(out[untouched] == 5)  # other labels survive, except where the object now lies
    assert not np.any((out == 0) & (labels == 5))


def test_liver_sized_mask_compression(capsys):
    mask = organ_mask()
    full_bytes = mask.size  # an uncompressed uint8 full volume, as MONAI Label returns per click
    delta = MaskDelta.from_full(mask)
    data = delta.encode()
    with capsys.disabled():
        print(f"\nMaskDelta liver-sized mask: {int(mask.sum()):,} voxels in a 512x512x100 volume, box "
              f"{[b - a for a, b in zip(delta.start, delta.stop)]}: {len(data):,} bytes encoded vs "
              f"{full_bytes:,} uncompressed ({full_bytes / len(data):.0f}x smaller)")
    assert mask.sum() > 800_000  # about 1.5 l at 0.8 x 0.8 x 2.5 mm
    assert len(data) < 60_000
    np.testing.assert_array_equal(MaskDelta.decode(data).to_full(), mask)


def test_raw_payload_is_decoded_without_copy():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 256, size=(8, 9, 10), dtype=np.uint8)  # incompressible: stored raw
    data = bytearray(MaskDelta((0, 0, 0), (10, 9, 8), mask, (10, 9, 8)).encode())
    assert data[5] == 0  # codec raw
    back = MaskDelta.decode(data)
    np.testing.assert_array_equal(back.mask, mask)
    assert np.shares_memory(back.mask, np.frombuffer(data, np.uint8))


def _corrupt(data: bytes, offset: int, value: int) -> bytes:
    b = bytearray(data)
    b[offset] = value
    return bytes(b)


@pytest.fixture
def encoded():
    return MaskDelta.from_full(organ_mask((40, 30, 20), (12, 9, 6)), labels={1: "liver"}).encode()


def test_truncated_and_extended_bytes(encoded):
    for cut in (0, 3, _HEADER.size - 1, _HEADER.size + 5, len(encoded) - 1):
        with pytest.raises(MaskDeltaError):
            MaskDelta.decode(encoded[:cut])
    with pytest.raises(MaskDeltaError, match="does not match its header"):
        MaskDelta.decode(encoded + b"\0")


def test_bad_magic_version_codec_packing(encoded):
    with pytest.raises(MaskDeltaError, match="bad magic"):
        MaskDelta.decode(b"XXXX" + encoded[4:])
    with pytest.raises(MaskDeltaError, match=f"version 2 is not supported.*version {VERSION}"):
        MaskDelta.decode(_corrupt(encoded, 4, 2))
    with pytest.raises(MaskDeltaError, match="codec"):
        MaskDelta.decode(_corrupt(encoded, 5, 7))
    with pytest.raises(MaskDeltaError, match="packing"):
        MaskDelta.decode(_corrupt(encoded, 6, 9))


def test_corrupt_payload_labels_and_box(encoded):
    header = _HEADER.unpack_from(encoded)
    nlab = header[-2]
    payload_at = _HEADER.size + nlab
    with pytest.raises(MaskDeltaError):
        MaskDelta.decode(encoded[:payload_at] + bytes(len(encoded) - payload_at))  # zeroed zlib stream
    with pytest.raises(MaskDeltaError, match="label names are corrupt"):
        MaskDelta.decode(encoded[:_HEADER.size] + b"{" * nlab + encoded[payload_at:])
    # A box that does not fit the volume it claims.
    bad = _HEADER.pack(MAGIC, VERSION, 1, 1, 0, 0, 0, 0, 50, 5, 5, 10, 10, 10, 0, 0)
    with pytest.raises(MaskDeltaError, match="does not fit"):
        MaskDelta.decode(bad)
    # A well-formed stream whose voxel count disagrees with the box.
    payload = zlib.compress(bytes(3))
    bad = _HEADER.pack(MAGIC, VERSION, 1, 1, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 0, len(payload)) + payload
    with pytest.raises(MaskDeltaError, match="payload size"):
        MaskDelta.decode(bad)
    # Random bytes never escape as anything but MaskDeltaError.
    rng = np.random.default_rng(1)
    for _ in range(200):
        junk = bytearray(encoded)
        for pos in rng.integers(0, len(junk), size=3):
            junk[pos] = int(rng.integers(0, 256))
        try:
            MaskDelta.decode(bytes(junk))
        except MaskDeltaError:
            pass


def test_invalid_construction_and_paste():
    with pytest.raises(MaskDeltaError, match="does not fit"):
        MaskDelta((0, 0, 0), (5, 5, 5), np.zeros((5, 5, 5), np.uint8), (4, 5, 5))
    with pytest.raises(MaskDeltaError, match="does not match the box"):
        MaskDelta((0, 0, 0), (2, 3, 4), np.zeros((2, 3, 4), np.uint8), (5, 5, 5))
    with pytest.raises(MaskDeltaError, match="uint8"):
        MaskDelta((0, 0, 0), (1, 1, 1), np.full((1, 1, 1), 300), (5, 5, 5))
    with pytest.raises(MaskDeltaError, match="whole numbers"):
        MaskDelta((0, 0, 0), (1, 1, 1), np.full((1, 1, 1), 0.4), (5, 5, 5))
    delta = MaskDelta((1, 1, 1), (2, 2, 2), np.ones((1, 1, 1), bool), (5, 5, 5))
    assert delta.mask.dtype == np.uint8
    with pytest.raises(MaskDeltaError, match="made for a volume of size"):
        delta.paste(np.zeros((5, 5, 6), np.uint8))
    with pytest.raises(MaskDeltaError, match="one shape"):
        MaskDelta.from_full(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    assert struct.calcsize("<4sBBBB3i3i3iII") == _HEADER.size == 52
