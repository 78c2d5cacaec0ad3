"""Job events: one JSON object per line in ``<workdir>/events.jsonl`` (fields in docs/training.md).

The worker appends and flushes each line, so a reader (the server, the Slicer panel, ``claraseg train``)
can follow a running job by reading the file; a line cut short by a crash is skipped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: Job states, in the order a successful job passes through them.
STATES = ("queued", "preparing", "training", "publishing", "completed", "failed", "cancelled")
#: States after which the worker has exited.
FINAL_STATES = ("completed", "failed", "cancelled")
#: Event types written by the worker.
EVENT_TYPES = ("state", "iteration", "epoch", "validation", "checkpoint", "published", "error", "info")


class EventWriter:
    """Appends events to a JSON-lines file (only rank 0 of a distributed job writes)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event; ``fields`` must be JSON-serialisable. Returns the record written."""
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event!r}")
        now = time.time()
        record = {"event": event, "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
                  "t": round(now, 3), **fields}
        if self.enabled:
            line = json.dumps(record, default=_jsonable) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return record

    def state(self, state: str, **fields: Any) -> dict[str, Any]:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        return self.emit("state", state=state, **fields)


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def read_events(path: str | os.PathLike, start: int = 0) -> list[dict[str, Any]]:
    """All complete events of a file from byte offset ``start`` (a partly written last line is skipped)."""
    return [e for e, _ in iter_events(path, start)]


def iter_events(path: str | os.PathLike, start: int = 0) -> Iterator[tuple[dict[str, Any], int]]:
    """Yield ``(event, offset after it)`` for each complete line from byte offset ``start``."""
    p = Path(path)
    if not p.exists():
        return
    with open(p, "rb") as f:
        f.seek(start)
        offset = start
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # being written, or cut by a crash
            offset += len(raw)
            try:
                yield json.loads(raw), offset
            except ValueError:
                continue


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold events into a status: last state, iteration, loss, Dice, published version, error."""
    status: dict[str, Any] = {"state": "queued", "iteration": 0, "epoch": 0, "max_iterations": None,
                              "loss": None, "lr": None, "eta_s": None, "baseline_dice": None, "best_dice": None,
                              "dice": None, "checkpoint": None, "published": None, "error": None}
    for e in events:
        kind = e.get("event")
        if kind == "state":
            status["state"] = e["state"]
            for key in ("baseline_dice", "best_dice", "published"):
                if e.get(key) is not None:
                    status[key] = e[key]
        elif kind == "iteration":
            for key in ("iteration", "epoch", "max_iterations", "loss", "lr", "eta_s"):
                status[key] = e.get(key, status[key])
        elif kind == "validation":
            status["dice"] = e.get("dice")
            if e.get("baseline"):
                status["baseline_dice"] = e.get("dice")
            elif e.get("dice") is not None and (status["best_dice"] is None or e["dice"] > status["best_dice"]):
                status["best_dice"] = e["dice"]
        elif kind == "checkpoint":
            status["checkpoint"] = e.get("path")
        elif kind == "published":
            status["published"] = e.get("name")
        elif kind == "error":
            status["error"] = {k: e.get(k) for k in ("type", "code", "message")}
    return status
