"""The classical baseline on a phantom, its bad-input handling, the grid check, and `claraseg eval` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from claraseg.backend import Backend, Session
from claraseg.cli import main
from claraseg.errors import GeometryMismatchError, InvalidPointsError, SessionNotFoundError, UnknownModelError
from claraseg.evaluate import ClassicalBackend, run_structure
from claraseg.evaluate.runner import structures_of
from claraseg.io import Image, make_phantom, write_image


@pytest.fixture(scope="module")
def phantom():
    """A small axis-aligned phantom (image, label)."""
    return make_phantom(seed=3, size_ijk=(48, 48, 32), oblique=False)


@pytest.fixture(scope="module")
def phantom_files(phantom, tmp_path_factory):
    d = tmp_path_factory.mktemp("phantom")
    image, label = phantom
    return write_image(image, d / "image.nii.gz"), write_image(label, d / "label.nrrd")


def _liver(label: Image) -> np.ndarray:
    return label.array == next(v for v, info in label.labels.items() if info.name == "liver")


@pytest.mark.parametrize("method", ["random_walker", "region_growing"])
def test_baseline_improves_with_clicks(phantom, method):
    image, label = phantom
    backend = ClassicalBackend(method)
    assert isinstance(backend, Backend)
    session = backend.open_session(image)
    assert isinstance(session, Session)
    r = run_structure(session, method, "deepgrow3d", _liver(label), interactions=6)
    assert len(r.dice) == 6 and all(0.0 <= d <= 1.0 for d in r.dice)
    assert max(r.dice[1:]) > r.dice[0]
    if method == "random_walker":
        assert max(r.dice) > 0.8, r.dice


def test_baseline_extreme_points_and_2d(phantom):
    image, label = phantom
    session = ClassicalBackend().open_session(image)
    r = run_structure(session, "random_walker", "dextr3d", _liver(label), interactions=3, refine_model="random_walker")
    assert r.interactions[0].kind == "extreme_points" and len(r.interactions[0].points) == 6
    assert r.dice[0] > 0.6, r.dice
    r2 = run_structure(session, "random_walker", "deepgrow2d", _liver(label), interactions=4, slice_axis=0)
    assert r2.slice["axis"] == 0 and r2.dice[-1] > 0.6, r2.dice


def test_baseline_bad_input_is_typed_and_the_session_stays_usable(phantom):
    image, label = phantom
    session = ClassicalBackend().open_session(image)
    with pytest.raises(InvalidPointsError, match="outside the volume"):
        session.click("random_walker", [[100, 0, 0]])
    with pytest.raises(InvalidPointsError, match="no clicks"):
        session.click("random_walker")
    with pytest.raises(InvalidPointsError, match="at least 6"):
        session.extreme_points("random_walker", [[1, 1, 1]] * 5)
    with pytest.raises(UnknownModelError):
        session.click("deepgrow3d", [[10, 10, 10]])
    with pytest.raises(UnknownModelError):
        ClassicalBackend("graph_cut")
    delta = session.click("random_walker", [[24, 24, 16]])
    assert delta.image_size == image.size_ijk
    undo = session.undo()
    assert not undo.to_full().any()
    session.close()
    for call in (session.undo, session.clear, lambda: session.set_mask("1", undo)):
        with pytest.raises(SessionNotFoundError, match="closed"):
            call()


def test_grid_mismatch_is_a_clear_error(phantom, tmp_path, capsys):
    image, label = phantom
    moved = Image(label.array, label.origin + 5.0, label.spacing, label.direction, label.labels)
    with pytest.raises(GeometryMismatchError, match="origin"):
        structures_of("case", image, moved)
    write_image(image, tmp_path / "image.nii.gz")
    write_image(Image(label.array, label.origin, label.spacing * 1.5, label.direction, label.labels),
                tmp_path / "label.nii.gz")
    code = main(["eval", "--method", "random_walker", "--image", str(tmp_path / "image.nii.gz"),
                 "--label", str(tmp_path / "label.nii.gz"), "--quiet"])
    assert code == 1
    assert "not on the image's voxel grid" in capsys.readouterr().err


def _check_report_shape(report: dict, clicks: int) -> None:
    s = report["summary"]
    assert set(s["mean_dice_at"]) >= {"1", "3", "5", "10"}
    assert s["mean_dice_at"]["10"] is None if clicks < 10 else isinstance(s["mean_dice_at"]["10"], float)
    assert isinstance(s["mean_noc85"], float)
    assert s["latency_ms"]["p50"] > 0 and s["latency_ms"]["p95"] >= s["latency_ms"]["p50"]
    for st in report["structures"]:
        assert len(st["dice"]) == clicks and set(st["noc"]) == {"80", "85", "90"}
        assert st["voxels"] >= 200


def test_cli_eval_baseline_end_to_end(phantom_files, tmp_path, capsys):
    image, label = phantom_files
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    code = main(["eval", "--method", "random_walker", "--image", str(image), "--label", str(label),
                 "--min-voxels", "300", "--clicks", "5", "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    report = json.loads(out_json.read_text())
    _check_report_shape(report, 5)
    assert report["model"]["kind"] == "deepgrow3d" and report["protocol"]["noc_cap"] == 20
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean Dice @1" in capsys.readouterr().out


def test_cli_eval_model_beside_baseline(phantom_files, tmp_path):
    """A tiny random-weight bundle through the real local engine, with the baseline beside it."""
    testing = pytest.importorskip("claraseg.models.testing", reason="claraseg.models.testing (engine part) missing")
    pytest.importorskip("claraseg.engine", reason="claraseg.engine (LocalBackend) missing")
    models = tmp_path / "models"
    testing.make_tiny_bundle("deepgrow3d", models / "deepgrow3d")
    image, label = phantom_files
    out_json, out_png = tmp_path / "m.json", tmp_path / "m.png"
    code = main(["eval", "--model", "deepgrow3d", "--method", "random_walker", "--models-dir", str(models),
                 "--image", str(image), "--label", str(label), "--labels", "1,2", "--min-voxels", "200",
                 "--clicks", "3", "--json", str(out_json), "--plot", str(out_png), "--quiet"])
    assert code == 0
    report = json.loads(out_json.read_text())
    _check_report_shape(report, 3)
    assert report["model"]["backend"].startswith("local")
    assert report["baseline"]["method"] == "random_walker"
    assert len(report["baseline"]["structures"]) == len(report["structures"]) == 2
    assert len(report["comparison"]["ahead"]) == 3
    assert out_png.stat().st_size > 1000


def test_bench_measures_latency_and_session_memory(tmp_path):
    """`claraseg bench`'s measurements on small volumes with tiny random-weight bundles (real engine)."""
    testing = pytest.importorskip("claraseg.models.testing", reason="claraseg.models.testing (engine part) missing")
    engine = pytest.importorskip("claraseg.engine", reason="claraseg.engine (LocalBackend) missing")
    from claraseg.evaluate.bench import bench_latency, bench_session, format_bench

    for kind in ("deepgrow3d", "deepgrow2d", "dextr3d"):
        testing.make_tiny_bundle(kind, tmp_path / kind)
    backend = engine.LocalBackend(tmp_path, device="cpu", idle_timeout=None)
    try:
        lat = bench_latency(backend, size_ijk=(96, 96, 24), clicks=2, jitter_runs=0)
        ses = bench_session(backend, size_ijk=(96, 96, 32), repeats=1)
    finally:
        backend.close()
    assert lat["volume"]["size_ijk"] == [96, 96, 24] and lat["volume"]["dtype"] == "int16"
    for kind in ("deepgrow3d", "deepgrow2d", "dextr3d"):
        m = lat["models"][kind]
        assert m["n"] >= 2 and 0 < m["p50_ms"] <= m["p95_ms"]
        assert all(isinstance(c["pass"], bool) for c in m["targets"].values())
    assert ses["volume"]["bytes"] == 96 * 96 * 32 * 2
    assert ses["open_s"] > 0 and ses["held_after_open_bytes"] > 0 and ses["memory_factor"] > 0
    report = {"threads": 1, "note": "test", "latency": lat, "session": ses, "all_targets_pass": False}
    assert "deepgrow3d: n=" in format_bench(report)


def test_cli_eval_through_a_real_server(phantom_files, tmp_path):
    """The same protocol code evaluates a RemoteBackend: `claraseg eval --server` against `claraseg serve`."""
    testing = pytest.importorskip("claraseg.models.testing", reason="claraseg.models.testing (engine part) missing")
    server = pytest.importorskip("claraseg.server.testing", reason="claraseg.server.testing (server part) missing")
    pytest.importorskip("claraseg.client", reason="claraseg.client (RemoteBackend) missing")
    models = tmp_path / "models"
    testing.make_tiny_bundle("deepgrow3d", models / "deepgrow3d")
    image, label = phantom_files
    out_json = tmp_path / "remote.json"
    with server.ServerProcess(["--models", str(models), "--workers", "1"], tmp_path / "store", tmp_path / "log") as srv:
        code = main(["eval", "--server", srv.url, "--model", "deepgrow3d", "--image", str(image), "--label",
                     str(label), "--labels", "1", "--clicks", "2", "--json", str(out_json), "--quiet"])
        assert code == 0, srv.log_tail()
    report = json.loads(out_json.read_text())
    assert report["model"]["backend"] == f"remote {srv.url}"
    assert len(report["structures"]) == 1 and len(report["structures"][0]["dice"]) == 2
    st = report["structures"][0]
    assert len(st["latency_ms"]) == len(st["compute_ms"]) == 2
    assert all(0 < c <= t for c, t in zip(st["compute_ms"], st["latency_ms"]))
    assert report["summary"]["transfer_ms"]["p50"] >= 0


def test_cli_eval_reads_a_dicom_series_and_a_seg_nrrd(phantom, tmp_path, capsys):
    from claraseg.io import write_dicom_series

    image, label = phantom
    write_dicom_series(image, tmp_path / "dicom")
    write_image(label, tmp_path / "label.seg.nrrd")
    code = main(["eval", "--method", "random_walker", "--image", str(tmp_path / "dicom"), "--label",
                 str(tmp_path / "label.seg.nrrd"), "--labels", "1", "--clicks", "2", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])["summary"]
    assert summary["structures"] == 1 and summary["mean_dice_at"]["1"] > 0.3


def test_cli_heldout_refuses_a_slice_axis(tmp_path, capsys):
    """The held-out 2D protocol is fixed to axis k: asking for another axis is an error, not ignored."""
    code = main(["eval", "--heldout", "--model", "deepgrow2d", "--slice-axis", "0", "--out", str(tmp_path), "--quiet"])
    assert code == 1
    assert "--slice-axis does not apply to --heldout" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_heldout_without_a_slice_axis_gets_past_the_check(tmp_path, capsys):
    """Without --slice-axis, --heldout runs (here it stops at the unknown model, not at the axis check)."""
    code = main(["eval", "--heldout", "--model", "no_such_model", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no_such_model" in err and "--slice-axis" not in err
