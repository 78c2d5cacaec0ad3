"""The annotation controller against real backends: the server tests' deterministic stand-in backend
in-process and behind a real server (RemoteBackend over HTTP), and the engine's LocalBackend once it
exists. Also the model grouping, API-version check and the user-facing error messages."""

from __future__ import annotations

import sys
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


def test_api_version_and_messages():
    a.check_api_version(API_VERSION)
    with pytest.raises(ApiVersionError, match="update the extension or the server"):
        a.check_api_version("99.0")
    assert a.user_message(InvalidPointsError("place a point first"), "Click") == "Click: place a point first"
    assert "cannot reach the annotation server" in a.user_message(ConnectionError("refused"))
    assert "Install" in a.user_message(ModuleNotFoundError("No module named 'torch'"))
    assert "Traceback" not in a.user_message(KeyError("x")) and "Python console" in a.user_message(KeyError("x"))


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
