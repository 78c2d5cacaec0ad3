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
            out.append(s.undo("second"))
        if "deepgrow2d" in kinds:
            c = _centre(label, organ)
            out.append(s.click(kinds["deepgrow2d"], foreground=[c], object_id="flat", slice_axis=2))
        if "dextr3d" in kinds:
            out.append(s.extreme_points(kinds["dextr3d"], _extremes(label.array == organ), object_id="ext"))
        if "segmentation" in kinds:
            out.append(s.auto_segment(kinds["segmentation"]))
        s.set_mask("painted", MaskDelta.from_full((label.array == organ).astype(np.uint8)))
        out.append(s.undo("painted"))
        if "deepgrow3d" in kinds:
            # An object handed back with its points and clicks (as after a re-open), then refined.
            c = _centre(label, organ)
            s.set_mask("restored", MaskDelta.from_full((label.array == organ).astype(np.uint8)),
                       points=_extremes(label.array == organ), foreground=[c], background=[[2, 2, 2]])
            out.append(s.click(kinds["deepgrow3d"], background=[[c[0] - 6, c[1], c[2]]], object_id="restored"))
            out.append(s.undo("restored"))
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


@pytest.fixture(params=["local", "remote", "baseline"])
def any_backend(request):
    """The engine (local and remote) and the classical baseline, whose one model is of kind deepgrow3d."""
    if request.param == "baseline":
        from claraseg.evaluate import ClassicalBackend

        return ClassicalBackend()
    return request.getfixturevalue(f"{request.param}_backend")


def test_clear_is_undoable(any_backend, case):
    image, label = case
    g = _model(any_backend, "deepgrow3d")
    s = any_backend.open_session(image)
    try:
        clicked = s.click(g.name, foreground=[_centre(label, _organ(label))]).to_full()
        assert clicked.any()
        cleared = clicked.copy()
        s.clear().paste(cleared)
        assert not cleared.any()
        s.undo().paste(cleared)
        np.testing.assert_array_equal(cleared, clicked)
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


def _full(deltas: list[MaskDelta], size) -> np.ndarray:
    out = np.zeros(tuple(size)[::-1], np.uint8)
    for d in deltas:
        d.paste(out)
    return out


def test_set_mask_restores_points_and_clicks(backend, case):
    """An object handed to a new session with its mask, extreme points and clicks refines exactly as it
    would have in the session it came from; without them (a painted mask) it does not."""
    image, label = case
    g, x = _model(backend, "deepgrow3d").name, _model(backend, "dextr3d").name
    organ = label.array == _organ(label)
    pts, c = _extremes(organ), _centre(label, _organ(label))
    nxt = {"background": [[c[0] - 6, c[1], c[2]]], "object_id": "o"}
    s1 = backend.open_session(image)
    try:
        made = [s1.extreme_points(x, pts, object_id="o"), s1.click(g, foreground=[c], object_id="o")]
        mask = MaskDelta.from_full(_full(made, image.size_ijk))
        want = _full([*made, s1.click(g, **nxt)], image.size_ijk)
    finally:
        s1.close()
    results = {}
    for how, state in (("restored", {"points": pts, "foreground": [c]}), ("painted", {})):
        s = backend.open_session(image)
        try:
            s.set_mask("o", mask, **state)
            results[how] = _full([mask, s.click(g, **nxt)], image.size_ijk)
            undone = results[how].copy()
            s.undo("o").paste(undone)
            s.undo("o").paste(undone)  # back past the set_mask: the empty object
            assert not undone.any()
        finally:
            s.close()
    np.testing.assert_array_equal(results["restored"], want)
    assert not np.array_equal(results["painted"], want), "the restored points and clicks made no difference"


def test_set_mask_refuses_bad_points_and_changes_nothing(backend, case):
    image, label = case
    g = _model(backend, "deepgrow3d").name
    c = _centre(label, _organ(label))
    size = image.size_ijk
    s = backend.open_session(image)
    try:
        first = s.click(g, foreground=[c], object_id="o")
        mask = MaskDelta.from_full(first.to_full())
        for state in ({"points": [c] * 5}, {"points": [c] * 5 + [[size[0], 0, 0]]}, {"foreground": [[-1, 0, 0]]},
                      {"background": [[0.5, 1, 1]]}, {"foreground": c}, {"background": [[1, 2]]},
                      {"points": "[[1,2,3]]"}):
            with pytest.raises(InvalidPointsError):
                s.set_mask("o", mask, **state)
        # Unchanged: undo still goes back from the first click to the empty object.
        back = s.undo("o")
        full = first.to_full()
        back.paste(full)
        assert not full.any()
        assert s.click(g, foreground=[c], object_id="o").image_size == size  # still usable
    finally:
        s.close()


def test_identical_masks_local_and_remote(local_backend, remote_backend, case):
    a = script(local_backend, case)
    b = script(remote_backend, case)
    assert len(a) == len(b) and a
    for n, (x, y) in enumerate(zip(a, b)):
        assert (x.start, x.stop, x.image_size) == (y.start, y.stop, y.image_size), f"delta {n}"
        assert np.array_equal(x.mask, y.mask), f"delta {n}: masks differ"
        assert x.labels == y.labels
