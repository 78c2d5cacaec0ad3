"""Following a job from its events file, written by the training part's own EventWriter."""

from __future__ import annotations

import math

from ClaraTrainModuleLib.progress import EventTail, JobProgress, format_duration, parse_line

from claraseg.train.events import EventWriter, read_events, summarize


def write_job(path, iterations=6, dice=(0.41, 0.55, 0.62)):
    ev = EventWriter(path)
    ev.state("preparing", pid=1)
    ev.emit("validation", iteration=0, dice=dice[0], baseline=True)
    ev.state("training", iteration=0, max_iterations=iterations, epoch=0)
    for i in range(1, iterations + 1):
        ev.emit("iteration", iteration=i, max_iterations=iterations, epoch=(i - 1) // 3, loss=1.0 / i, lr=1e-4,
                its_per_s=2.0, eta_s=(iterations - i) / 2.0)
        if i % 3 == 0:
            ev.emit("validation", iteration=i, dice=dice[i // 3], baseline=False)
            ev.emit("checkpoint", path=f"/jobs/j/checkpoints/{i}.pt", iteration=i)
    ev.state("publishing", iteration=iterations)
    ev.emit("published", name="deepgrow3d@v2", version=2)
    ev.state("completed", baseline_dice=dice[0], best_dice=max(dice[1:]), published="deepgrow3d@v2")
    return ev


def test_tail_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []
    ev = EventWriter(path)
    ev.state("preparing")
    with open(path, "a") as f:
        f.write('{"event": "iteration", "iter')  # being written
    first = tail.read_new()
    assert [e["event"] for e in first] == ["state"]
    with open(path, "a") as f:
        f.write('ation": 1, "loss": 0.5}\nnot json\n')
    second = tail.read_new()
    assert [e.get("iteration") for e in second] == [1] and tail.skipped == 1
    assert tail.read_new() == []
    assert parse_line(b"") is None and parse_line('{"no_event": 1}') is None


def test_progress_agrees_with_the_training_parts_summary(tmp_path):
    path = tmp_path / "events.jsonl"
    write_job(path)
    events = read_events(path)
    p = JobProgress().update_all(events)
    ref = summarize(events)
    for key in ("state", "iteration", "max_iterations", "loss", "lr", "baseline_dice", "best_dice", "checkpoint",
                "published"):
        assert getattr(p, key) == ref[key], key
    assert p.finished and p.fraction == 1.0 and p.time_left() == 0.0
    assert p.summary() == "Done: deepgrow3d@v2 published (validation Dice 0.410 -> 0.620); selectable in Clara Annotate"
    cols, rows = p.curve_table()
    assert cols == ["iteration", "loss", "validation Dice"]
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert math.isnan(rows[0][1]) and rows[0][2] == 0.41 and rows[3][2] == 0.55 and math.isnan(rows[1][2])
    assert [d for _, d in p.dices] == [0.41, 0.55, 0.62]


def test_running_summary_and_time_left(tmp_path):
    path = tmp_path / "events.jsonl"
    ev = EventWriter(path)
    ev.state("training", iteration=0, max_iterations=100)
    ev.emit("iteration", iteration=10, max_iterations=100, loss=0.7315, eta_s=45.0)
    p = JobProgress().update_all(read_events(path))
    assert p.summary() == "Training, iteration 10/100, loss 0.7315, 45 s left"
    # Without the job's own estimate the rate since the first iteration event is used.
    q = JobProgress()
    q.update({"event": "iteration", "iteration": 10, "max_iterations": 100, "loss": 1.0, "t": 1000.0})
    q.update({"event": "iteration", "iteration": 30, "max_iterations": 100, "loss": 0.8, "t": 1010.0})
    assert q.time_left() == 35.0


def test_failed_cancelled_and_unpublished_outcomes():
    p = JobProgress().update_all([{"event": "error", "message": "datalist entry 0: needs 'label'"},
                                  {"event": "state", "state": "failed"}])
    assert p.summary() == "Failed: datalist entry 0: needs 'label'"
    c = JobProgress().update_all([{"event": "iteration", "iteration": 7}, {"event": "state", "state": "cancelled"}])
    assert "Stopped at iteration 7" in c.summary() and "Resume" in c.summary()
    u = JobProgress().update_all([{"event": "state", "state": "completed", "publish_skipped": "no gain"}])
    assert u.summary() == "Done (no validation Dice); not published: no gain"


def test_format_duration():
    assert [format_duration(v) for v in (None, -1, 42, 125, 3725)] == ["-", "-", "42 s", "2 min 05 s", "1 h 02 min"]
