"""Model labels -> named, coloured segments; per-label deltas; object masks kept as tight boxes."""

from __future__ import annotations

import re

import numpy as np
from ClaraAnnotateLib import segments as s

from claraseg.io import MaskDelta


def test_segments_for_labels_names_and_colours():
    specs = s.segments_for_labels({0: "background", 3: "kidney_left", 1: "spleen", 7: "mystery_organ"})
    assert [x.label_value for x in specs] == [1, 3, 7]
    assert [x.name for x in specs] == ["spleen", "kidney left", "mystery organ"]
    assert specs[0].color == s.KNOWN_COLORS["spleen"]
    assert specs[1].color != s.KNOWN_COLORS["kidney"]  # a shade of the kidney colour: left and right differ
    assert max(abs(a - b) for a, b in zip(specs[1].color, s.KNOWN_COLORS["kidney"])) < 0.2
    assert specs[2].color not in s.KNOWN_COLORS.values()


def test_left_and_right_and_shared_known_colours_get_distinct_segment_colours():
    labels = {1: "kidney_left", 2: "kidney_right", 3: "rib_left_1", 4: "rib_left_2", 5: "vertebrae_L1", 6: "femur_left",
              7: "hip_left", 8: "kidney_l"}
    colors = [x.color for x in s.segments_for_labels(labels)]
    assert len(set(colors)) == len(colors)
    assert s.color_for("kidney_left") != s.color_for("kidney_right")
    assert s.color_for("kidney_l") == s.color_for("kidney_left")
    assert all(0 <= c <= 1 for c in np.ravel(colors))
    assert len({s.palette_color(i) for i in range(20)}) == 20
    assert s.label_key(s.display_name("kidney_left")) == "kidney_left"


def test_split_labels_gives_one_binary_delta_per_label_over_the_whole_box():
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1, 1:3, 2:4] = 1
    mask[3, 4, 5] = 2
    d = MaskDelta((1, 2, 3), (7, 7, 7), mask, (10, 10, 10), {1: "spleen", 2: "liver", 5: "absent"})
    parts = s.split_labels(d)
    assert sorted(parts) == [1, 2, 5]
    assert parts[1].labels == {1: "spleen"} and parts[5].labels == {1: "absent"}
    for v, p in parts.items():
        assert p.start == d.start and p.stop == d.stop
        np.testing.assert_array_equal(p.mask, (mask == v).astype(np.uint8))


def test_object_mask_matches_pasting_every_delta_into_a_full_volume():
    rng = np.random.default_rng(5)
    size = (17, 13, 11)
    full = np.zeros(size[::-1], np.uint8)
    obj = s.ObjectMask(size)
    for _ in range(25):
        start = rng.integers(0, size)
        stop = np.minimum(size, start + rng.integers(0, 7, 3))
        shape = tuple((stop - start)[::-1])
        d = MaskDelta(tuple(start), tuple(stop), (rng.random(shape) < 0.4).astype(np.uint8), size)
        d.paste(full)
        obj.apply(d)
        np.testing.assert_array_equal(obj.delta.to_full(), full)
        assert obj.voxels == int(full.sum())
    # The box stays tight: it is the bounding box of what is set.
    nz = np.argwhere(full)
    if len(nz):
        assert obj.delta.start == tuple(nz.min(axis=0)[::-1]) and obj.delta.stop == tuple(nz.max(axis=0)[::-1] + 1)
    obj.apply(MaskDelta((0, 0, 0), size, np.zeros(size[::-1], np.uint8), size))
    assert obj.delta.is_empty


def test_same_mask_compares_tight_boxes():
    full = np.zeros((6, 7, 8), np.uint8)
    full[2:4, 1:5, 3:6] = 1
    painted = MaskDelta.from_full(full)
    tracked = s.ObjectMask((8, 7, 6))
    tracked.apply(MaskDelta((0, 0, 0), (8, 7, 6), full, (8, 7, 6)))
    assert s.same_mask(painted, tracked.delta)
    full[3, 2, 4] = 0
    assert not s.same_mask(MaskDelta.from_full(full), tracked.delta)
    assert s.same_mask(MaskDelta.empty((8, 7, 6)), None) and not s.same_mask(painted, None)


def test_object_ids_are_safe_for_the_server_and_unique():
    assert s.object_id("vtkMRMLSegmentationNode1", "Segment_1") == "vtkMRMLSegmentationNode1.Segment_1"
    odd = [s.object_id("vtkMRMLSegmentationNode1", x) for x in ("left kidney", "left/kidney", "..x", "é" * 200)]
    assert len(set(odd)) == 4
    for oid in odd:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", oid) and ".." not in oid
