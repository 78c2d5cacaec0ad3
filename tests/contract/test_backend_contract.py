"""One contract for every Backend: LocalBackend and RemoteBackend must behave alike and give identical
masks for identical inputs."""

from __future__ import annotations

import numpy as np
import pytest

from claraseg.backend import MODEL_KINDS, Backend, ModelDescriptor, Session
from claraseg.errors import InvalidPointsError, SessionNotFoundError, UnknownModelError
from claraseg.io import MaskDelta


def _model(backend, kind) -> ModelDescriptor:
    m = next((d for d in backend.models() if d.kind == kind), None)
    if m is None:
        pytest.skip(f"the hosted backend has no {kind} model")
    return m


def _centre(label, value) -> list[int]:
    k, j, i = np.argwhere(label.array == value).mean(0).round().astype(int)
    return [int(i), int(j), int(k)]


def _extremes(mask) -> list[list[int]]:
    idx = np.argwhere(mask)  # [k, j, i]
    pts = []
    for axis in range(3):
        for pick in (idx[:, axis].argmin(), idx[:, axis].argmax()):
            k, j, i = idx[pick]
            pts.append([int(i), int(j), int(k)])
    return pts


def _organ(label) -> int:
    values, counts = np.unique(label.array[label.array > 0], return_counts=True)
    return int(values[counts.argmax()])


def script(backend: Backend, case) -> list[MaskDelta]:
    """The same interactions on any backend; returns every delta in order."""
    image, label = case
    organ = _organ(label)
    kinds = {d.kind: d.name for d in backend.models()}
    out: list[MaskDelta] = []
    s = backend.open_session(image)
    try:
        if "deepgrow3d" in kinds:
            g = kinds["deepgrow3d"]
            c = _centre(label, organ)
            out.append(s.click(g, foreground=[c]))
            out.append(s.click(g, foreground=[[c[0] + 2, c[1], c[2]]], background=[[2, 2, 2]]))
            out.append(s.undo())
            out.append(s.click(g, background=[[c[0] - 6, c[1], c[2]]]))
            out.append(s.click(g, foreground=[c], object_id="second"))
            out.append(s.clear("second"))
        if "deepgrow2d" in kinds:
            c = _centre(label, organ)
            out.append(s.click(kinds["deepgrow2d"], foreground=[c], object_id="flat", slice_axis=2))
        if "dextr3d" in kinds:
            out.append(s.extreme_points(kinds["dextr3d"], _extremes(label.array == organ), object_id="ext"))
        if "segmentation" in kinds:
            out.append(s.auto_segment(kinds["segmentation"]))
        s.set_mask("painted", MaskDelta.from_full((label.array == organ).astype(np.uint8)))
        out.append(s.undo("painted"))
    finally:
        s.close()
    return out


def test_descriptors(backend):
    models = backend.models()
    assert models
    for d in models:
        assert isinstance(d, ModelDescriptor) and d.kind in MODEL_KINDS and d.name
        assert ModelDescriptor.from_dict(d.to_dict()) == d


def test_session_protocol(backend, case):
    image, _ = case
    s = backend.open_session(image)
    assert isinstance(s, Session) and isinstance(backend, Backend)
    assert tuple(s.image_size) == image.size_ijk and s.id
    s.close()


def test_click_returns_delta_on_the_image_grid(backend, case):
    image, label = case
    g = _model(backend, "deepgrow3d")
    s = backend.open_session(image)
    try:
        d = s.click(g.name, foreground=[_centre(label, _organ(label))])
        assert isinstance(d, MaskDelta) and d.image_size == image.size_ijk
        assert set(np.unique(d.mask)) <= {0, 1}
        back = s.undo()
        full = d.to_full()
        back.paste(full)
        assert not full.any()  # undo restores the empty mask
    finally:
        s.close()


def test_2d_click_changes_one_slice(backend, case):
    image, label = case
    g = _model(backend, "deepgrow2d")
    s = backend.open_session(image)
    try:
        c = _centre(label, _organ(label))
        d = s.click(g.name, foreground=[c], slice_axis=2)
        assert d.is_empty or (d.start[2] == c[2] and d.stop[2] == c[2] + 1)
    finally:
        s.close()


def test_extreme_points_and_auto_segment(backend, case):
    image, label = case
    s = backend.open_session(image)
    try:
        kinds = {d.kind: d for d in backend.models()}
        if "dextr3d" in kinds:
            d = s.extreme_points(kinds["dextr3d"].name, _extremes(label.array == _organ(label)))
            assert d.image_size == image.size_ijk
            with pytest.raises(InvalidPointsError):
                s.extreme_points(kinds["dextr3d"].name, [[1, 1, 1]] * (kinds["dextr3d"].min_points - 1 or 1)
                                 + [[999, 1, 1]])
        if "segmentation" in kinds:
            d = s.auto_segment(kinds["segmentation"].name)
            assert d.image_size == image.size_ijk
            assert set(np.unique(d.mask)) - {0} <= set(kinds["segmentation"].labels)
        if not {"dextr3d", "segmentation"} & set(kinds):
            pytest.skip("the hosted backend has neither a dextr3d nor a segmentation model")
    finally:
        s.close()


def test_bad_input_raises_the_same_typed_errors(backend, case):
    image, _ = case
    g = _model(backend, "deepgrow3d")
    s = backend.open_session(image)
    try:
        with pytest.raises(InvalidPointsError):
            s.click(g.name, foreground=[[image.size_ijk[0] + 3, 0, 0]])
        with pytest.raises(UnknownModelError):
            s.click("no-such-model", foreground=[[1, 1, 1]])
    finally:
        s.close()
    with pytest.raises(SessionNotFoundError):
        s.click(g.name, foreground=[[1, 1, 1]])


def test_identical_masks_local_and_remote(local_backend, remote_backend, case):
    a = script(local_backend, case)
    b = script(remote_backend, case)
    assert len(a) == len(b) and a
    for n, (x, y) in enumerate(zip(a, b)):
        assert (x.start, x.stop, x.image_size) == (y.start, y.stop, y.image_size), f"delta {n}"
        assert np.array_equal(x.mask, y.mask), f"delta {n}: masks differ"
        assert x.labels == y.labels
