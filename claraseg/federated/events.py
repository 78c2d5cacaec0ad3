"""Events of a federated job: JSON lines, the format of the fine-tune jobs' events (``event``, ``time``, ``t``).

The server writes ``<job>/events.jsonl`` (rounds, the final global model's Dice at each site, the published
version); each site writes ``<site dir>/events.jsonl`` (its local rounds). Readers (``claraseg federate
status``, the Slicer panel) fold them with :func:`summarize`. No torch, no NVFlare.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from claraseg.train.events import read_events

#: ``state`` values, in the order a successful job passes through them.
STATES = ("created", "running", "finalizing", "completed", "failed", "aborted")
FINAL_STATES = ("completed", "failed", "aborted")
#: Event types (fields in docs/federated.md).
EVENT_TYPES = ("state", "round", "site_round", "evaluation", "published", "error", "info")


class FedEventWriter:
    """Appends events to a JSON-lines file, one flushed line per event."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event!r}")
        if event == "state" and fields.get("state") not in STATES:
            raise ValueError(f"unknown state {fields.get('state')!r}")
        now = time.time()
        record = {"event": event, "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
                  "t": round(now, 3), **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold server events into ``{state, round, num_rounds, sites, he, rounds: [...], final, published, error}``.

    ``rounds`` holds one entry per finished round: ``round`` (0-based), ``global_dice`` (the model the round
    started from, on the sites' held-out splits), ``local_dice``, ``loss``, ``time_s``, ``bytes_up`` and
    ``sites`` (per-site figures)."""
    status: dict[str, Any] = {"state": "created", "round": None, "num_rounds": None, "sites": [], "he": None,
                              "rounds": [], "final": None, "published": None, "error": None}
    for e in events:
        kind = e.get("event")
        if kind == "state":
            status["state"] = e.get("state", status["state"])
            for key in ("num_rounds", "sites", "he"):
                if e.get(key) is not None:
                    status[key] = e[key]
        elif kind == "round":
            status["round"] = e.get("round")
            status["rounds"].append({k: v for k, v in e.items() if k not in ("event", "time", "t")})
        elif kind == "evaluation":
            status["final"] = {k: v for k, v in e.items() if k not in ("event", "time", "t")}
        elif kind == "published":
            status["published"] = e.get("name")
        elif kind == "error":
            status["error"] = {k: e.get(k) for k in ("site", "message")}
    return status


def read_status(job_dir: str | os.PathLike) -> dict[str, Any]:
    """The status of a federated job folder (its server events; ``created`` before the job ran)."""
    job_dir = Path(job_dir)
    status = summarize(read_events(job_dir / "events.jsonl"))
    status["job"] = str(job_dir)
    return status
