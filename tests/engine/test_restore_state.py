"""set_mask with points and clicks: a session re-opened by a client gives an object back the extreme points
and clicks it had, so its next click takes the same route (DEXTR3D correction or DeepGrow) and sees the
earlier clicks, as if the session had never gone away. Bad input changes nothing. Tiny random-weight
bundles (the engine conftest's): mechanics, not quality."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from claraseg.backend import MIN_EXTREME_POINTS
from claraseg.engine import session as session_module
from claraseg.engine import stages as stages_module
from claraseg.errors import InvalidPointsError, MaskDeltaError
from claraseg.guidance import extreme_points
from claraseg.io import MaskDelta


class _Runs:
    """The runner calls a click makes, with the clicks each was given (the real runners still run)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, list, list]] = []
        for module, name in ((session_module, "run_dextr"), (session_module, "run_deepgrow"),
                             (stages_module, "refit_with_dextr")):
            real = getattr(module, name)
            sig = inspect.signature(real)

            def spy(*args, _real=real, _name=name, _sig=sig, **kwargs):
                given = _sig.bind_partial(*args, **kwargs).arguments
                fg, bg = given.get("fg"), given.get("bg")
                self.calls.append((_name, _as_list(fg), _as_list(bg)))
                return _real(*args, **kwargs)

            monkeypatch.setattr(module, name, spy)

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def clear(self) -> None:
        self.calls.clear()


def _as_list(points) -> list:
    return [] if points is None else np.asarray(points).reshape(-1, 3).tolist()


def _state(s, oid: str) -> tuple:
    o = s.objects[oid]
    return (s.mask(oid).tobytes(), list(o.fg), list(o.bg), list(o.points), o.local_rel, len(o.history))


@pytest.fixture(scope="module")
def organ(small_phantom):
    image, label = small_phantom
    gt = label.array == 1
    inside = np.argwhere(gt)[len(np.argwhere(gt)) // 2][::-1].tolist()  # [i, j, k]
    return image, extreme_points(gt).tolist(), inside


def test_restored_points_and_clicks_give_the_object_back_its_route(tiny_backend, organ, monkeypatch):
    image, pts, inside = organ
    # The original session: an object from extreme points, corrected by one click.
    s1 = tiny_backend.open_session(image)
    s1.extreme_points("dextr3d", pts, object_id="a")
    s1.click("deepgrow3d", foreground=[inside], object_id="a")
    obj = s1.objects["a"]
    mask, fg, bg = MaskDelta.from_full(s1.mask("a")), list(obj.fg), list(obj.bg)
    assert obj.points == pts and fg == [inside]
    runs = _Runs(monkeypatch)
    s1.click("deepgrow3d", background=[[1, 1, 1]], object_id="a")  # the next click, without a re-open
    want_calls, want_mask = list(runs.calls), s1.mask("a")
    assert runs.names == ["run_dextr"]  # DEXTR3D corrects it from the points, with every click
    assert want_calls[0][1:] == ([inside], [[1, 1, 1]])

    # A re-opened session given the mask, the points and the clicks: the same route, the same clicks seen,
    # the same mask.
    s2 = tiny_backend.open_session(image)
    s2.set_mask("a", mask, points=pts, foreground=fg, background=bg)
    assert (s2.objects["a"].points, s2.objects["a"].fg, s2.objects["a"].bg) == (pts, fg, bg)
    runs.clear()
    s2.click("deepgrow3d", background=[[1, 1, 1]], object_id="a")
    assert runs.calls == want_calls
    np.testing.assert_array_equal(s2.mask("a"), want_mask)
    assert s2.objects["a"].fg == [inside] and s2.objects["a"].bg == [[1, 1, 1]]

    # Without them (a painted mask, the default) the click takes the DeepGrow route and sees only itself.
    s3 = tiny_backend.open_session(image)
    s3.set_mask("a", mask)
    assert (s3.objects["a"].points, s3.objects["a"].fg, s3.objects["a"].bg) == ([], [], [])
    runs.clear()
    s3.click("deepgrow3d", background=[[1, 1, 1]], object_id="a")
    assert runs.names[0] == "run_deepgrow" and runs.calls[0][1:] == ([], [[1, 1, 1]])
    for s in (s1, s2, s3):
        s.close()


def test_restored_clicks_are_seen_by_the_next_deepgrow_click(tiny_backend, organ, monkeypatch):
    image, _, inside = organ
    near = [inside[0] + 2, inside[1], inside[2]]
    s1 = tiny_backend.open_session(image)
    s1.click("deepgrow3d", foreground=[inside], object_id="b")
    s1.click("deepgrow3d", foreground=[near], background=[[2, 2, 2]], object_id="b")
    mask, fg, bg = MaskDelta.from_full(s1.mask("b")), list(s1.objects["b"].fg), list(s1.objects["b"].bg)
    runs = _Runs(monkeypatch)
    s1.click("deepgrow3d", background=[[3, 3, 3]], object_id="b")
    want_calls, want_mask = list(runs.calls), s1.mask("b")
    assert want_calls[0] == ("run_deepgrow", [inside, near], [[2, 2, 2], [3, 3, 3]])

    s2 = tiny_backend.open_session(image)
    s2.set_mask("b", mask, foreground=fg, background=bg)  # clicks only: no points, a DeepGrow object
    runs.clear()
    s2.click("deepgrow3d", background=[[3, 3, 3]], object_id="b")
    assert runs.calls == want_calls
    np.testing.assert_array_equal(s2.mask("b"), want_mask)
    s1.close()
    s2.close()


def test_restoring_is_an_undo_step(tiny_backend, organ):
    image, pts, inside = organ
    s = tiny_backend.open_session(image)
    s.extreme_points("dextr3d", pts, object_id="c")
    s.click("deepgrow3d", foreground=[inside], object_id="c")
    before = _state(s, "c")
    painted = MaskDelta((2, 2, 2), (6, 6, 4), np.ones((2, 4, 4), np.uint8), image.size_ijk)
    s.set_mask("c", painted, points=pts[::-1], foreground=[[3, 3, 3]])
    assert s.objects["c"].points == pts[::-1] and s.objects["c"].fg == [[3, 3, 3]] and s.objects["c"].bg == []
    back = s.undo("c")
    assert _state(s, "c")[:5] == before[:5]
    assert not back.is_empty
    # On a new object the undo step leads to the empty object.
    s.set_mask("d", painted, points=pts, background=[[4, 4, 4]])
    s.undo("d")
    assert _state(s, "d")[:5] == (np.zeros(image.array.shape, np.uint8).tobytes(), [], [], [], 0.0)
    s.close()


def test_bad_state_is_refused_and_changes_nothing(tiny_backend, organ):
    image, pts, inside = organ
    size = image.size_ijk
    s = tiny_backend.open_session(image)
    s.extreme_points("dextr3d", pts, object_id="e")
    s.click("deepgrow3d", foreground=[inside], object_id="e")
    mask = MaskDelta.from_full(s.mask("e"))
    before = _state(s, "e")
    cases = [
        ({"points": pts[:MIN_EXTREME_POINTS - 1]}, "at least 6"),
        ({"points": [[1, 1, 1]]}, "at least 6"),
        ({"points": pts[:5] + [[size[0], 1, 1]]}, "outside the volume"),
        ({"foreground": [[-1, 2, 3]]}, "outside the volume"),
        ({"background": [[1, size[1] + 4, 2]]}, "outside the volume"),
        ({"foreground": [[1.5, 2, 3]]}, "integers"),
        ({"foreground": [["1", 2, 3]]}, "integers"),
        ({"background": [[True, 2, 3]]}, "integers"),
        ({"foreground": [[np.nan, 2, 3]]}, "integers"),
        ({"foreground": [1, 2, 3]}, "list of 3 integers"),       # one level of nesting short
        ({"foreground": [[[1, 2, 3]]]}, "list of 3 integers"),   # one level too many
        ({"background": [[1, 2]]}, "list of 3 integers"),
        ({"points": "[[1,2,3]]"}, "list of \\[i, j, k\\]"),
        ({"foreground": 7}, "list of \\[i, j, k\\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidPointsError, match=message):
            s.set_mask("e", mask, **kwargs)
        assert _state(s, "e") == before, kwargs
    with pytest.raises(MaskDeltaError):
        s.set_mask("e", MaskDelta.empty((3, 3, 3)), points=pts)
    assert _state(s, "e") == before and "f" not in s.objects
    with pytest.raises(InvalidPointsError):
        s.set_mask("f", mask, points=pts[:3])
    assert "f" not in s.objects  # a refused restore does not create the object either
    # Still usable, and an empty list is fine.
    s.set_mask("e", mask, points=[], foreground=[], background=np.zeros((0, 3), int))
    s.click("deepgrow3d", foreground=[inside], object_id="e")
    s.close()


def test_the_classical_baseline_restores_its_prompts(small_phantom):
    from claraseg.evaluate import ClassicalBackend

    image, label = small_phantom
    gt = label.array == 1
    inside = np.argwhere(gt)[len(np.argwhere(gt)) // 2][::-1].tolist()
    backend = ClassicalBackend("region_growing")
    s1 = backend.open_session(image)
    current = np.zeros(image.array.shape, np.uint8)
    s1.click("region_growing", foreground=[inside], object_id="a").paste(current)
    s1.click("region_growing", background=[[1, 1, 1]], object_id="a").paste(current)
    mask, want = MaskDelta.from_full(current), current.copy()
    s1.click("region_growing", foreground=[[inside[0] + 1, *inside[1:]]], object_id="a").paste(want)
    s2 = backend.open_session(image)
    s2.set_mask("a", mask, foreground=[inside], background=[[1, 1, 1]])
    got = current.copy()
    s2.click("region_growing", foreground=[[inside[0] + 1, *inside[1:]]], object_id="a").paste(got)
    np.testing.assert_array_equal(got, want)  # recomputed from the restored prompts plus the new click
    s3 = backend.open_session(image)
    s3.set_mask("a", mask)  # painted: the click is all it has
    painted = current.copy()
    s3.click("region_growing", foreground=[[inside[0] + 1, *inside[1:]]], object_id="a").paste(painted)
    assert (painted != want).any()
    with pytest.raises(InvalidPointsError, match="at least 6"):
        s2.set_mask("a", mask, points=[inside])
