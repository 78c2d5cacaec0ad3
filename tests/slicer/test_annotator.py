"""The annotation controller against real backends: the server tests' deterministic stand-in backend
in-process and behind a real server (RemoteBackend over HTTP), and the engine's LocalBackend once it
exists. Also the model grouping, API-version check and the user-facing error messages."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ClaraAnnotateLib import annotator as a
from ClaraAnnotateLib.settings import BackendSettings

from claraseg.backend import API_VERSION, ModelDescriptor
from claraseg.errors import ApiVersionError, InvalidPointsError, SessionNotFoundError, UnknownModelError
from claraseg.io import MaskDelta, make_phantom

SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"


def standin_factory():
    if not (SERVER_TESTS / "standin.py").exists():
        pytest.skip("tests/server/standin.py (the server tests' stand-in backend) is missing")
    sys.path.insert(0, str(SERVER_TESTS))
    import standin

    return lambda settings: standin.make()


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=3, size_ijk=(40, 40, 24))


def test_group_and_default_models():
    ms = [ModelDescriptor("seg", "segmentation"), ModelDescriptor("dg3@v2", "deepgrow3d"),
          ModelDescriptor("dg3", "deepgrow3d"), ModelDescriptor("dg2", "deepgrow2d"), ModelDescriptor("x", "custom")]
    groups = a.group_models(ms)
    assert list(groups) == ["deepgrow2d", "deepgrow3d", "segmentation", "custom"]
    assert [m.name for m in groups["deepgrow3d"]] == ["dg3", "dg3@v2"]
    assert a.default_model(ms, a.CLICK_KINDS).name == "dg3"  # 3D first, unversioned first
    assert a.default_model(ms, a.EXTREME_KINDS) is None
    assert a.choose_model(ms, a.CLICK_KINDS, "dg2") == (["dg3@v2", "dg3", "dg2"], "dg2")  # kept when offered
    assert a.choose_model(ms, a.CLICK_KINDS, "gone") == (["dg3@v2", "dg3", "dg2"], "dg3")  # else the default
    assert a.choose_model(ms, a.EXTREME_KINDS, "") == ([], "")
    assert a.status_style("error") == "color: #c0392b" and a.status_style("info") == ""
    assert a.points_text(4) == "4 of at least 6 points placed"


def test_api_version_and_messages():
    a.check_api_version(API_VERSION)
    with pytest.raises(ApiVersionError, match="update the extension or the server"):
        a.check_api_version("99.0")
    assert a.user_message(InvalidPointsError("place a point first"), "Click") == "Click: place a point first"
    assert "cannot reach the annotation server" in a.user_message(ConnectionError("refused"))
    assert "Install" in a.user_message(ModuleNotFoundError("No module named 'torch'"))
    assert "Traceback" not in a.user_message(KeyError("x")) and "Python console" in a.user_message(KeyError("x"))
    # a package missing deep inside a transform (MONAI wraps it) still reads as a missing package
    try:
        try:
            raise ModuleNotFoundError("No module named 'nibabel'", name="nibabel")
        except ImportError as e:
            raise RuntimeError("applying transform <monai.transforms.Orientationd>") from e
    except RuntimeError as wrapped:
        msg = a.user_message(wrapped, "Auto-segment")
    assert msg.startswith("Auto-segment: a Python package is missing (No module named 'nibabel')") and "Install" in msg


def test_local_mode_installs_what_auto_segmentation_needs(monkeypatch):
    from ClaraAnnotateLib import install

    assert "nibabel>=5" in install.LOCAL_REQUIREMENTS
    shipped = [line.strip() for line in (Path(a.__file__).parents[1] / "Resources" / "requirements.txt").read_text()
               .splitlines() if line.strip() and not line.startswith("#")]
    assert shipped == [install.TORCH_REQUIREMENT, *install.LOCAL_REQUIREMENTS]
    assert install.missing_for("auto-segmentation") == []
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if not installed
    assert install.missing_for("auto-segmentation") == ["nibabel>=5"]
    steps = install.plan_install(False, version_of=lambda name: None if name == "nibabel" else "99")
    assert [s.requirement for s in steps] == ["nibabel>=5"]


def test_remote_backend_unreachable_is_a_message_not_a_traceback():
    c = a.AnnotationController()
    with pytest.raises(Exception) as e:
        c.connect(BackendSettings(mode="remote", url="http://127.0.0.1:9"))
    assert "127.0.0.1:9" in a.user_message(e.value) and not c.connected


def run_script(c: a.AnnotationController, image):
    """The interactions the module makes, in order; returns the object's mask after each."""
    models = {m.kind: m.name for m in c.info.models}
    c.open(image, key=("vol", 1))
    out = []
    d = c.click("seg.1", models["deepgrow3d"], foreground=[[20, 20, 12]])
    out.append(d)
    with pytest.raises(InvalidPointsError, match="Place 3 more extreme points"):
        c.extreme_points("seg.2", models["dextr3d"], [[1, 1, 1], [5, 5, 5], [9, 9, 9]])
    with pytest.raises(InvalidPointsError, match="DeepGrow"):
        c.click("seg.1", models["dextr3d"], foreground=[[1, 1, 1]])
    with pytest.raises(UnknownModelError):
        c.click("seg.1", "no-such-model", foreground=[[1, 1, 1]])
    pts = [[10, 20, 12], [30, 20, 12], [20, 10, 12], [20, 30, 12], [20, 20, 6], [20, 20, 18]]
    out.append(c.extreme_points("seg.2", models["dextr3d"], pts))
    auto = c.auto_segment(models["segmentation"])
    assert auto.labels, "auto-segment deltas carry label names"
    return out, auto


def test_controller_with_the_standin_backend_and_silent_reopen(phantom):
    image, _ = phantom
    c = a.AnnotationController(standin_factory())
    info = c.connect(BackendSettings(mode="local"))
    assert info.mode == "local" and info.api_version == API_VERSION and len(info.models) == 3
    (click, extreme), auto = run_script(c, image)
    assert not click.is_empty and c.objects["seg.1"].voxels == int(click.mask.sum())
    assert extreme.start == (10, 10, 6) and extreme.stop == (31, 31, 19)
    before = c.objects["seg.1"].delta.to_full().copy()
    # The session goes away (expired, server restarted): the next call re-opens it, hands the objects'
    # masks back and succeeds without the user noticing.
    c._session.close()
    with pytest.raises(SessionNotFoundError):
        c._session.undo("seg.1")
    d = c.click("seg.1", "grow3d", foreground=[[30, 20, 12]])
    assert c.reopened == 1
    after = before.copy()
    d.paste(after)
    np.testing.assert_array_equal(c.objects["seg.1"].delta.to_full(), after)
    # Undo in the re-opened session goes back to the mask handed over: the old mask, not an empty one.
    c.undo("seg.1")
    np.testing.assert_array_equal(c.objects["seg.1"].delta.to_full(), before)
    c.clear("seg.1")
    assert c.objects["seg.1"].delta.is_empty
    # A painted segment handed over with set_mask becomes the object's mask.
    painted = MaskDelta((2, 2, 2), (6, 6, 4), np.ones((2, 4, 4), np.uint8), image.size_ijk)
    c.set_mask("seg.3", painted)
    assert c.objects["seg.3"].voxels == 32
    assert not c.needs_image(("vol", 1)) and c.needs_image(("vol", 2))
    c.close()
    assert not c.connected


def test_controller_over_a_real_server(standin_server, phantom):
    srv = standin_server
    c = a.AnnotationController()
    info = c.connect(BackendSettings(mode="remote", url=srv.url, token=srv.token))
    assert info.url == srv.url and info.api_version.split(".")[0] == API_VERSION.split(".")[0]
    assert info.server_version and "Connected (" + srv.url in info.summary
    assert set(a.group_models(info.models)) == {"deepgrow3d", "dextr3d", "segmentation"}
    (click, extreme), auto = run_script(c, image=phantom[0])
    assert not click.is_empty and extreme.start == (10, 10, 6)
    assert set(auto.labels.values()) == {"bright", "dark"}
    c.close()
    with pytest.raises(Exception) as e:
        a.AnnotationController().connect(BackendSettings(mode="remote", url=srv.url, token="wrong-token-000000"))
    assert "token" in a.user_message(e.value).lower()


def test_controller_with_the_engine_local_backend(tmp_path, phantom):
    try:
        from claraseg.engine import LocalBackend
        from claraseg.models.testing import make_tiny_bundle
    except ImportError as e:
        pytest.skip(f"claraseg.engine.LocalBackend / claraseg.models.testing not available yet ({e})")
    from claraseg.backend import MODEL_KINDS

    for kind in MODEL_KINDS:
        make_tiny_bundle(kind, tmp_path / kind)
    c = a.AnnotationController(lambda s: LocalBackend(tmp_path, device="cpu"))
    info = c.connect(BackendSettings(mode="local"))
    assert {m.kind for m in info.models} == set(MODEL_KINDS)
    assert all(m.extra["bundle"] == str(tmp_path / m.name) for m in info.models)
    image = phantom[0]
    c.open(image, key="v")
    name = a.default_model(c.info.models, a.CLICK_KINDS).name
    d = c.click("o", name, foreground=[[20, 20, 12]])
    c._session.close()
    d2 = c.click("o", name, foreground=[[22, 20, 12]])
    assert c.reopened == 1 and d.image_size == d2.image_size == image.size_ijk
    c.close()


def test_published_versions_stay_selectable_with_their_scores():
    base = ModelDescriptor("deepgrow3d", "deepgrow3d", description="fine-tuned by claraseg job j1: validation "
                           "Dice 0.71 -> 0.8042", extra={"revision": 3, "versions": ["deepgrow3d@v1", "deepgrow3d@v2",
                                                                                      "deepgrow3d@v3"]})
    ms = a.expand_versions([base])
    assert [m.name for m in ms] == ["deepgrow3d", "deepgrow3d@v1", "deepgrow3d@v2"]
    assert ms[1].extra["older_version_of"] == "deepgrow3d" and ms[1].kind == "deepgrow3d"
    assert a.model_scores(base) == "Dice 0.710 -> 0.804"
    assert a.model_scores(ModelDescriptor("x", "dextr3d", extra={"fine_tune": {"baseline_dice": None,
                                                                             "best_dice": 0.5}})) == "Dice 0.500"
    assert a.model_scores(ModelDescriptor("y", "dextr3d")) == ""


def test_local_backend_publishes_into_the_users_models_folder(tmp_path):
    pytest.importorskip("claraseg.engine", reason="claraseg.engine (the local engine) is not installed")
    from claraseg.models.testing import make_tiny_bundle

    user = tmp_path / "user-models"
    backend = a.make_backend(BackendSettings(mode="local", device="cpu", models_dir=str(user)))
    try:
        assert backend.registry.publish_dir == user and user.is_dir()
        make_tiny_bundle("dextr3d", user / "mydextr")  # e.g. a version a fine-tune job published
        backend.registry.reload()
        assert "mydextr" in {m.name for m in backend.models()}
    finally:
        backend.close()


# ----- the objects' extreme points and clicks, handed back when a session is lost ----------------------
@pytest.fixture(scope="module")
def engine_models(tmp_path_factory):
    pytest.importorskip("claraseg.engine", reason="claraseg.engine (the local engine) is not installed")
    from claraseg.backend import MODEL_KINDS
    from claraseg.models.testing import make_tiny_bundle

    root = tmp_path_factory.mktemp("annotator-models")
    for kind in MODEL_KINDS:
        make_tiny_bundle(kind, root / kind)
    return root


def _local_controller(models) -> a.AnnotationController:
    from claraseg.engine import LocalBackend

    c = a.AnnotationController(lambda s: LocalBackend(models, device="cpu", idle_timeout=None))
    c.connect(BackendSettings(mode="local"))
    return c


def _organ_prompts(label):
    idx = np.argwhere(label.array == 1)  # [k, j, i]
    pts = [[int(v) for v in idx[idx[:, ax].argmin() if end == 0 else idx[:, ax].argmax()][::-1]]
           for ax in range(3) for end in range(2)]
    return pts, [int(v) for v in idx[len(idx) // 2][::-1]]


def _engine_state(c: a.AnnotationController, oid: str) -> tuple[list, list, list]:
    o = c._session.objects.get(oid)
    return (list(o.points), list(o.fg), list(o.bg)) if o is not None else ([], [], [])


def _recorded(c: a.AnnotationController, oid: str) -> tuple[list, list, list]:
    p = c.prompts[oid].current if oid in c.prompts else None
    return ([list(v) for v in p.points], [list(v) for v in p.foreground], [list(v) for v in p.background]) \
        if p is not None else ([], [], [])


def test_prompt_records_follow_the_engine(engine_models, phantom):
    """After every interaction the controller's record of an object's points and clicks is what the engine's
    session holds: extreme points reset the clicks, 3D and 2D clicks append, painted masks and clear empty
    them, undo goes back (also past a set_mask and a clear), calls on unknown objects change nothing."""
    from ClaraAnnotateLib import prompts

    from claraseg.engine import session as engine_session

    assert prompts.MAX_UNDO == engine_session.MAX_UNDO
    image, label = phantom
    pts, c_ = _organ_prompts(label)
    c = _local_controller(engine_models)
    c.open(image, key="v")
    painted = MaskDelta((2, 2, 2), (6, 6, 4), np.ones((2, 4, 4), np.uint8), image.size_ijk)
    steps = [
        ("o", lambda: c.click("o", "deepgrow3d", foreground=[c_])),
        ("o", lambda: c.click("o", "deepgrow3d", background=[[2, 2, 2]])),
        ("o", lambda: c.extreme_points("o", "dextr3d", pts)),
        ("o", lambda: c.click("o", "deepgrow3d", foreground=[[c_[0] + 1, c_[1], c_[2]]])),
        ("o", lambda: c.click("o", "deepgrow2d", foreground=[c_], background=[[3, 3, c_[2]]], slice_axis=2)),
        ("o", lambda: c.undo("o")),
        ("o", lambda: c.set_mask("o", painted)),
        ("o", lambda: c.undo("o")),
        ("o", lambda: c.clear("o")),
        ("o", lambda: c.undo("o")),
        ("o", lambda: c.undo("o")),
        ("o", lambda: c.undo("o")),
        ("o", lambda: c.undo("o")),
        ("o", lambda: c.undo("o")),
        ("o", lambda: c.undo("o")),  # past the first step: nothing left to undo
        ("new", lambda: c.clear("new")),  # unknown to the session: no step
        ("new", lambda: c.undo("new")),
        ("new", lambda: c.click("new", "deepgrow3d", foreground=[c_])),
        ("new", lambda: c.undo("new")),
    ]
    seen = set()
    for n, (oid, step) in enumerate(steps):
        step()
        assert _recorded(c, oid) == _engine_state(c, oid), f"step {n}"
        seen.add(tuple(len(v) for v in _recorded(c, oid)))
    assert (6, 2, 1) in seen and (6, 1, 0) in seen and (0, 1, 1) in seen  # the steps exercised something
    with pytest.raises(InvalidPointsError):  # a refused call changes no record
        c.click("o", "deepgrow3d", foreground=[[999, 0, 0]])
    assert _recorded(c, "o") == _engine_state(c, "o")
    c.close()


def test_prompt_record_history_is_bounded_like_the_engines():
    from ClaraAnnotateLib.prompts import MAX_UNDO, PromptRecord

    r = PromptRecord()
    r.extreme_points([[1, 1, 1]] * 6)
    for n in range(MAX_UNDO + 5):
        r.click([[n, 0, 0]])
    assert len(r.history) == MAX_UNDO and len(r.current.foreground) == MAX_UNDO + 5
    for _ in range(MAX_UNDO + 3):
        r.undo()
    assert len(r.current.foreground) == 5 and r.current.points  # the oldest steps were dropped
    r.clear()
    assert r.current.empty and r.current.set_mask_args() == {}
    r.undo()
    assert r.current.set_mask_args() == {"points": [[1, 1, 1]] * 6, "foreground": [[n, 0, 0] for n in range(5)]}


def _script_until_loss(c: a.AnnotationController, image, label) -> None:
    pts, centre = _organ_prompts(label)
    c.open(image, key="v")
    c.extreme_points("o", "dextr3d", pts)
    c.click("o", "deepgrow3d", foreground=[centre])
    c.click("o", "deepgrow2d", background=[[3, 3, centre[2]]], slice_axis=2)
    c.click("b", "deepgrow3d", foreground=[centre], background=[[2, 2, 2]])  # a click-only object


def test_a_session_that_expires_mid_annotation_gets_points_and_clicks_back(engine_models, phantom):
    image, label = phantom
    _, centre = _organ_prompts(label)
    ref, c = _local_controller(engine_models), _local_controller(engine_models)
    for ctl in (ref, c):
        _script_until_loss(ctl, image, label)
    held = {oid: _engine_state(c, oid) for oid in ("o", "b")}
    assert held["o"][0] and held["o"][1] == [centre] and held["o"][2] == [[3, 3, centre[2]]]
    c._session.expire_if_idle(0.0, now=time.monotonic() + 1.0)  # idle timeout
    nxt = {"background": [[centre[0] - 5, centre[1], centre[2]]]}
    want = {oid: ref.click(oid, "deepgrow3d", **nxt) for oid in ("o", "b")}
    got = {oid: c.click(oid, "deepgrow3d", **nxt) for oid in ("o", "b")}
    assert c.reopened == 1
    for oid in ("o", "b"):
        # The re-opened session held the object's points and clicks before this click, so the click took
        # the same route, saw the same clicks and made the same mask as in the session that never went away.
        np.testing.assert_array_equal(c.objects[oid].delta.to_full(), ref.objects[oid].delta.to_full())
        assert (got[oid].start, got[oid].stop) == (want[oid].start, want[oid].stop)
        assert _engine_state(c, oid) == _engine_state(ref, oid) == _recorded(c, oid)
    # Undo goes back to the state handed over, then to the empty object (the new session's first step).
    c.undo("o")
    assert _engine_state(c, "o") == held["o"] == _recorded(c, "o")
    c.undo("o")
    assert _engine_state(c, "o") == ([], [], []) == _recorded(c, "o") and c.objects["o"].delta.is_empty
    # A painted segment handed over afterwards carries no points or clicks.
    c.set_mask("b", MaskDelta((2, 2, 2), (6, 6, 4), np.ones((2, 4, 4), np.uint8), image.size_ijk))
    assert _engine_state(c, "b") == ([], [], []) == _recorded(c, "b")
    ref.close()
    c.close()


def test_a_vanished_server_session_gets_points_and_clicks_back_over_http(engine_models, phantom, tmp_path):
    """Over a real server: the session disappears (closed by someone else, server restarted: 404); the
    remote session opens a new one and replays its interactions, so the controller needs no hand-over of
    its own and the next click gives what it gives without the loss."""
    import requests

    from claraseg.server.testing import ServerProcess

    image, label = phantom
    _, centre = _organ_prompts(label)
    token = "tok-restore-0123456789"
    with ServerProcess(["--models", str(engine_models)], tmp_path / "datastore", tmp_path / "server.log",
                       token=token) as srv:
        settings = BackendSettings(mode="remote", url=srv.url, token=token)
        ref, c = a.AnnotationController(), a.AnnotationController()
        for ctl in (ref, c):
            ctl.connect(settings)
            _script_until_loss(ctl, image, label)
        gone = c._session.id
        r = requests.delete(f"{srv.url}/session/{gone}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200
        nxt = {"background": [[centre[0] - 5, centre[1], centre[2]]]}
        for oid in ("o", "b"):
            ref.click(oid, "deepgrow3d", **nxt)
            c.click(oid, "deepgrow3d", **nxt)
            np.testing.assert_array_equal(c.objects[oid].delta.to_full(), ref.objects[oid].delta.to_full())
        assert c._session.reopened == 1 and c._session.id != gone and c.reopened == 0
        ref.close()
        c.close()
