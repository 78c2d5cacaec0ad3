"""LocalBackend sessions on phantoms with tiny random-weight bundles: deltas, undo, 2D axes, DEXTR3D,
auto-segmentation, threads, expiry, memory and every bad input."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from claraseg.backend import Backend, Session
from claraseg.engine import LocalBackend
from claraseg.errors import (
    ClarasegError,
    InvalidImageError,
    InvalidPointsError,
    MaskDeltaError,
    ModelError,
    SessionExpiredError,
    SessionNotFoundError,
    UnknownModelError,
)
from claraseg.guidance import extreme_points
from claraseg.io import Image, MaskDelta


def test_backend_implements_the_protocols(tiny_backend, small_phantom):
    assert isinstance(tiny_backend, Backend)
    s = tiny_backend.open_session(small_phantom[0])
    assert isinstance(s, Session)
    assert s.image_size == (48, 48, 24)
    assert tiny_backend.session(s.id) is s
    s.close()
    with pytest.raises(SessionNotFoundError):
        tiny_backend.session(s.id)
    with pytest.raises(SessionNotFoundError):
        s.click("deepgrow3d", [[1, 1, 1]])


def test_pasting_all_deltas_reproduces_the_mask_and_undo(tiny_backend, small_phantom):
    image, _ = small_phantom
    s = tiny_backend.open_session(image)
    client = np.zeros(image.array.shape, np.uint8)
    states = [client.copy()]
    for fg, bg in ([[[24, 24, 12]], []], [[], [[10, 10, 5]]], [[[30, 20, 12]], [[24, 30, 12]]]):
        d = s.click("deepgrow3d", fg, bg, object_id="liver")
        assert isinstance(d, MaskDelta) and d.image_size == (48, 48, 24)
        MaskDelta.decode(d.encode()).paste(client)  # what a remote client does
        np.testing.assert_array_equal(client, s.mask("liver"))
        states.append(client.copy())
    # Undo walks back through every state; each returned delta restores the previous mask.
    for expected in reversed(states[:-1]):
        s.undo("liver").paste(client)
        np.testing.assert_array_equal(client, expected)
        np.testing.assert_array_equal(s.mask("liver"), expected)
    assert s.undo("liver").is_empty  # nothing left to undo
    s.click("deepgrow3d", [[24, 24, 12]], object_id="liver").paste(client)
    s.clear("liver").paste(client)
    assert not client.any() and not s.mask("liver").any()
    s.close()


def test_objects_are_independent_and_set_mask_is_refined(tiny_backend, small_phantom):
    image, label = small_phantom
    s = tiny_backend.open_session(image)
    s.click("deepgrow3d", [[24, 24, 12]], object_id="a")
    before_a = s.mask("a")
    painted = MaskDelta.from_full((label.array == 1).astype(np.uint8))
    s.set_mask("b", painted)
    np.testing.assert_array_equal(s.mask("b"), label.array == 1)
    np.testing.assert_array_equal(s.mask("a"), before_a)
    s.click("deepgrow3d", [], [[5, 5, 5]], object_id="b")  # refines the painted mask
    s.undo("b")
    np.testing.assert_array_equal(s.mask("b"), label.array == 1)
    with pytest.raises(MaskDeltaError):
        s.set_mask("b", MaskDelta.empty((3, 3, 3)))
    s.close()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_2d_clicks_change_only_their_slice_on_any_axis(tiny_backend, small_phantom, axis):
    s = tiny_backend.open_session(small_phantom[0])
    p = [20, 22, 10]
    d = s.click("deepgrow2d", [p], object_id="o", slice_axis=axis)
    assert d.stop[axis] - d.start[axis] <= 1
    full = s.mask("o")
    other = np.delete(full, p[axis], axis=2 - axis)
    assert not other.any()
    if not d.is_empty:
        assert d.start[axis] == p[axis]
    # A second click on the same slice refines it.
    q = list(p)
    q[(axis + 1) % 3] += 3
    d2 = s.click("deepgrow2d", [], [q], object_id="o", slice_axis=axis)
    assert d2.is_empty or (d2.start[axis] == p[axis] and d2.stop[axis] == p[axis] + 1)
    # Whatever the (random-weight) network says, the clicked voxels take their click's label.
    full = s.mask("o")
    assert full[p[2], p[1], p[0]] == 1 and full[q[2], q[1], q[0]] == 0
    s.close()


def test_dextr_then_refinement_and_auto_segment(tiny_backend, small_phantom):
    image, label = small_phantom
    s = tiny_backend.open_session(image)
    pts = extreme_points(label.array == 1)
    d = s.extreme_points("dextr3d", pts.tolist(), object_id="x")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if not d.is_empty:  # the result stays near the points' box (plus the margin)
        assert np.all(np.asarray(d.start) >= lo - 6) and np.all(np.asarray(d.stop) <= hi + 7)
    s.click("dextr3d", [pts[0].tolist()], object_id="x")  # refinement goes to its DeepGrow partner
    seg = s.auto_segment("segmentation")
    assert set(seg.labels.values()) >= {"liver", "spleen"}
    assert seg.image_size == image.size_ijk
    assert int(seg.mask.max()) <= 5
    s.close()


def test_cpu_results_are_identical_run_to_run(tiny_backend, small_phantom):
    out = []
    for _ in range(2):
        s = tiny_backend.open_session(small_phantom[0])
        s.click("deepgrow3d", [[24, 24, 12]])
        out.append(s.click("deepgrow3d", [], [[12, 30, 8]]).encode())
        s.close()
    assert out[0] == out[1]


def test_concurrent_clicks_on_two_objects(tiny_backend, small_phantom):
    image, _ = small_phantom
    clicks = {"a": [[24, 24, 12], [26, 20, 10]], "b": [[10, 12, 6], [14, 14, 8]]}
    ref = tiny_backend.open_session(image)
    for obj, pts in clicks.items():
        for p in pts:
            ref.click("deepgrow3d", [p], object_id=obj)
    s = tiny_backend.open_session(image)
    errors = []

    def worker(obj):
        try:
            for p in clicks[obj]:
                s.click("deepgrow3d", [p], object_id=obj)
        except ClarasegError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(o,)) for o in clicks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for obj in clicks:
        np.testing.assert_array_equal(s.mask(obj), ref.mask(obj))
    ref.close()
    s.close()


def test_idle_sessions_expire_and_release_memory(tiny_models, small_phantom):
    backend = LocalBackend(tiny_models, device="cpu", idle_timeout=0.3)
    try:
        s = backend.open_session(small_phantom[0])
        s.click("deepgrow3d", [[24, 24, 12]])
        sid = s.id
        deadline = time.monotonic() + 10
        while sid in backend.sessions() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sid not in backend.sessions()
        with pytest.raises(SessionExpiredError):
            s.click("deepgrow3d", [[24, 24, 12]])
        with pytest.raises(SessionExpiredError):
            backend.session(sid)
        assert s.memory_bytes == 0
    finally:
        backend.close()


def test_session_memory_is_bounded(tiny_backend, small_phantom):
    image, _ = small_phantom
    s = tiny_backend.open_session(image)
    assert s.memory_bytes <= image.array.nbytes  # int16 voxels kept as int16, nothing else yet
    for n in range(6):
        s.click("deepgrow3d", [[20 + n, 24, 12]], object_id=str(n % 2))
    assert s.memory_bytes <= 2 * image.array.nbytes
    f32 = Image(image.array.astype(np.float32), image.origin, image.spacing, image.direction)
    s2 = tiny_backend.open_session(f32)
    assert s2.memory_bytes <= f32.array.nbytes // 2  # float32 kept as float16
    s.close()
    s2.close()


def test_bad_inputs_raise_typed_errors_and_the_session_stays_usable(tiny_backend, small_phantom):
    image, label = small_phantom
    s = tiny_backend.open_session(image)
    pts = extreme_points(label.array == 1).tolist()
    cases = [
        (InvalidPointsError, lambda: s.click("deepgrow3d", [[48, 0, 0]])),
        (InvalidPointsError, lambda: s.click("deepgrow3d", [[-1, 5, 5]])),
        (InvalidPointsError, lambda: s.click("deepgrow3d", [], [])),
        (InvalidPointsError, lambda: s.click("deepgrow3d", [[1, 2]])),
        (InvalidPointsError, lambda: s.click("deepgrow3d", [[np.nan, 2, 3]])),
        (InvalidPointsError, lambda: s.extreme_points("dextr3d", pts[:5])),
        (InvalidPointsError, lambda: s.extreme_points("dextr3d", [])),
        (InvalidPointsError, lambda: s.click("deepgrow2d", [[5, 5, 5], [5, 5, 6]], slice_axis=2)),
        (InvalidPointsError, lambda: s.click("deepgrow2d", [[5, 5, 5]])),
        (UnknownModelError, lambda: s.click("nope", [[5, 5, 5]])),
        (UnknownModelError, lambda: s.auto_segment("nope@v3")),
        (ModelError, lambda: s.extreme_points("deepgrow3d", pts)),
        (ModelError, lambda: s.auto_segment("deepgrow3d")),
        (ModelError, lambda: s.click("segmentation", [[5, 5, 5]])),
    ]
    for error, call in cases:
        with pytest.raises(error) as info:
            call()
        assert str(info.value)  # a message the user can act on
    d = s.click("deepgrow3d", [[24, 24, 12]])  # still usable
    assert d.image_size == image.size_ijk
    s.close()


def test_bad_images(tiny_backend):
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(InvalidImageError, match="NaN"):
        tiny_backend.open_session(Image(nan))
    thin = tiny_backend.open_session(Image(np.zeros((2, 40, 40), np.int16)))
    with pytest.raises(InvalidImageError, match="too small"):
        thin.click("deepgrow3d", [[5, 5, 1]])
    # A 2D model on the slices of the thin axis still works.
    thin.click("deepgrow2d", [[5, 5, 1]], slice_axis=2)
    thin.close()
    ok = tiny_backend.open_session(Image(np.zeros((8, 8, 8), np.int16)))
    ok.click("deepgrow3d", [[4, 4, 4]])
    ok.close()


def test_clicks_on_a_dextr_result_change_it_only_near_the_click(tmp_path, small_phantom):
    """A result of a DEXTR3D that takes no clicks (points only) is corrected locally by DeepGrow 3D: a
    refinement click changes voxels only within the DEXTR3D bundle's correction_radius_rel x the mask's extent
    of the click; a set mask or a cleared object is refined as a whole again, and undo brings the local
    mode back with the mask."""
    from claraseg.engine import LocalBackend
    from claraseg.models.testing import make_tiny_bundle

    make_tiny_bundle("deepgrow3d", tmp_path / "deepgrow3d")
    make_tiny_bundle("dextr3d", tmp_path / "dextr3d",
                     settings={"channels": ["image", "extreme_points"], "correction_radius_rel": 0.15})
    backend = LocalBackend(tmp_path, device="cpu", idle_timeout=None)
    image, label = small_phantom
    rel = backend.registry.get("dextr3d").settings["correction_radius_rel"]
    assert rel > 0
    s = backend.open_session(image)
    pts = extreme_points(label.array == 1)
    s.extreme_points("dextr3d", pts.tolist(), object_id="x")
    before = s.mask("x")
    if not before.any():  # random weights may give nothing; refine a set mask made local by hand instead
        s.objects["x"].mask.write((0, 0, 0), (label.array == 1).astype(np.uint8))
        before = s.mask("x")
    nz = np.argwhere(before)[:, ::-1]
    extent = float(((nz.max(axis=0) - nz.min(axis=0) + 1) * image.spacing).max())
    radius = max(rel * extent, 2 * float(np.max(image.spacing)))
    click = nz[len(nz) // 2]  # inside the mask, so the background click must remove something
    s.click("dextr3d", background=[click.tolist()], object_id="x")
    changed = np.argwhere(s.mask("x") != before)[:, ::-1]
    assert len(changed), "the background click changed nothing"
    dist = np.sqrt((((changed - click) * image.spacing) ** 2).sum(axis=1))
    assert dist.max() <= radius + 1e-6
    assert s.objects["x"].local_rel == rel
    s.set_mask("x", MaskDelta.from_full((label.array == 1).astype(np.uint8)))
    assert s.objects["x"].local_rel == 0.0
    s.undo("x")
    assert s.objects["x"].local_rel == rel
    s.clear("x")
    assert s.objects["x"].local_rel == 0.0
    s.close()
    backend.close()


def test_keep_changes_near_restores_the_mask_away_from_clicks():
    from claraseg.engine.masks import BoxMask
    from claraseg.engine.runners import keep_changes_near

    mask = BoxMask((20, 20, 20), np.array([5, 5, 5]), np.ones((10, 10, 10), np.uint8))  # extent 10 voxels
    new = np.zeros((20, 20, 20), np.uint8)  # the network erased everything
    out = keep_changes_near(new, (0, 0, 0), mask, np.array([[10, 10, 10]]), 0.3, np.array([1.0, 1.0, 1.0]))
    kk, jj, ii = np.indices(out.shape)
    d = np.sqrt((ii - 10) ** 2 + (jj - 10) ** 2 + (kk - 10) ** 2)
    assert not out[d <= 3].any()  # erased within 0.3 x 10 voxels of the click
    inside_far = (d > 3) & (mask.region((0, 0, 0), (20, 20, 20)) > 0)
    assert out[inside_far].all()  # kept elsewhere


def test_a_missing_refit_model_is_skipped_with_one_warning(tiny_models, small_phantom, tmp_path, caplog):
    """A models folder with DeepGrow 3D but without its re-fit model still segments, and says once why
    the re-fit is off."""
    import shutil

    import claraseg.engine.session as session_module

    shutil.copytree(tiny_models / "deepgrow3d", tmp_path / "deepgrow3d")
    session_module._warned.clear()
    image, label = small_phantom
    backend = LocalBackend(tmp_path, device="cpu", idle_timeout=None)
    s = backend.open_session(image)
    point = np.argwhere(label.array == 1)[0][::-1].tolist()
    with caplog.at_level("WARNING", logger="claraseg.engine"):
        s.click("deepgrow3d", [point], object_id="a")
        s.click("deepgrow3d", [point], object_id="b")
    warnings = [r for r in caplog.records if "refit model 'dextr3d' is not loaded" in r.getMessage()]
    assert len(warnings) == 1
    s.close()
    backend.close()
