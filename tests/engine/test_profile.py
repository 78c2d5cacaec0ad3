"""The click path's stage timer (``claraseg.engine.profile``): off by default, one record per interaction."""

from __future__ import annotations

import numpy as np
import pytest

from claraseg.engine import profile


def test_stage_is_a_shared_no_op_when_no_profiler_is_active():
    assert not profile.enabled()
    assert profile.stage("forward") is profile.stage("paste")
    assert profile.interaction("click") is profile.stage("x")
    with profile.stage("forward"):
        profile.count("forwards")  # nothing to count into: no error


def test_nested_stages_partition_the_interaction_time():
    with profile.Profiler() as prof:
        with profile.interaction("click", first=True):
            with profile.stage("refit"):
                profile.count("forwards", 2)
                with profile.stage("forward"):
                    pass
                with profile.stage("forward"):
                    pass
            with profile.stage("boundary"):
                pass
        with profile.stage("outside"):  # not inside an interaction: not recorded
            pass
    assert not profile.enabled()
    (rec,) = prof.records
    assert rec["kind"] == "click" and rec["first"] is True
    assert set(rec["stages"]) == {"refit", "refit/forward", "boundary", "other"}
    assert rec["stages"]["refit/forward"][1] == 2 and rec["counts"] == {"refit/forwards": 2}
    assert sum(s[0] for s in rec["stages"].values()) == pytest.approx(rec["total_ms"], abs=1e-6)


def test_a_profiled_session_records_every_stage_of_its_clicks(tiny_backend, small_phantom):
    image, label = small_phantom
    session = tiny_backend.open_session(image)
    try:
        organ = np.argwhere(label.array == 1)
        k, j, i = organ[len(organ) // 2]
        with profile.Profiler() as prof:
            session.click("deepgrow3d", [[int(i), int(j), int(k)]], object_id="a")
            session.click("deepgrow3d", [], [[int(i) + 3, int(j), int(k)]], object_id="a")
            lo, hi = organ.min(axis=0)[::-1], organ.max(axis=0)[::-1]
            c = (lo + hi) // 2
            pts = [[lo[0], c[1], c[2]], [hi[0], c[1], c[2]], [c[0], lo[1], c[2]], [c[0], hi[1], c[2]],
                   [c[0], c[1], lo[2]], [c[0], c[1], hi[2]]]
            session.extreme_points("dextr3d", pts, object_id="b")
        session.click("deepgrow3d", [[int(i), int(j), int(k)]], object_id="c")  # after: not recorded
    finally:
        session.close()
    first, second, extreme = prof.records
    assert (first["kind"], first["first"], second["first"], extreme["kind"]) == ("click", True, False, "extreme_points")
    for rec in prof.records:
        assert {"sample", "encode", "forward", "paste", "delta"} <= set(rec["stages"])
        assert rec["counts"]["forwards"] >= 1 and rec["counts"]["forward_inputs"] >= 1
        assert sum(s[0] for s in rec["stages"].values()) == pytest.approx(rec["total_ms"], rel=1e-6)
