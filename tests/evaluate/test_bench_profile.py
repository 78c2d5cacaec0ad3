"""`claraseg bench --profile` on small volumes with tiny random-weight bundles (the real engine)."""

from __future__ import annotations

import pytest


def test_bench_profile_groups_the_clicks_and_reports_their_stages(tmp_path):
    testing = pytest.importorskip("claraseg.models.testing", reason="claraseg.models.testing (engine part) missing")
    engine = pytest.importorskip("claraseg.engine", reason="claraseg.engine (LocalBackend) missing")
    from claraseg.evaluate.bench_profile import bench_profile, format_profile

    for kind in ("deepgrow3d", "deepgrow2d", "dextr3d"):
        testing.make_tiny_bundle(kind, tmp_path / kind)
    backend = engine.LocalBackend(tmp_path, device="cpu", idle_timeout=None)
    try:
        report = bench_profile(backend, size_ijk=(96, 96, 24), clicks=2, jitter_runs=0)
    finally:
        backend.close()
    groups = report["groups"]
    assert set(groups) == {"deepgrow3d first click", "deepgrow3d correction clicks", "dextr3d extreme points",
                           "deepgrow2d clicks"}
    assert groups["deepgrow3d first click"]["n"] == len(report["objects"])
    for g in groups.values():
        assert 0 < g["p50_ms"] <= g["p95_ms"]
        assert "forward" in g["stages"] and g["counts"]["forwards"] >= 1
        assert sum(s["share_pct"] for s in g["stages"].values()) == pytest.approx(100.0, abs=0.5)
    text = format_profile(report)
    assert "deepgrow3d correction clicks: n=" in text and "forward" in text
