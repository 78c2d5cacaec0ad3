"""Federated fine-tuning from the Clara Train panel (``claraseg federate``, docs/federated.md).

Two things happen in Slicer: the segmentations drawn here are exported as this site's datalist for a
federated job (the images and labels stay on this computer; the job's site app reads them here), and a
running job's rounds and metrics are shown, read from its events: the server's ``events.jsonl`` of the job
folder and, when given, this site's ``sites/<site>/events.jsonl``.

Everything but :class:`FederatedPanel` is plain Python (tested without Slicer); the panel builds its few
widgets in code, so the module's ``.ui`` file is untouched.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .progress import parse_line

SITE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
FINAL_STATES = ("completed", "failed", "aborted")


def check_site_name(name: str) -> str:
    """A site name as NVFlare and ``claraseg federate`` accept it, else ``ValueError`` saying so."""
    name = (name or "").strip()
    if not SITE_NAME.match(name) or name.lower() in ("server", "all"):
        raise ValueError(f"site name {name!r}: start with a letter; letters, digits, '-' and '_' only")
    return name


def write_site_datalist(cases, folder: str | os.PathLike, site: str) -> Path:
    """This site's datalist (``<folder>/<site>/datalist.json``) from exported cases, and ``site.json`` naming
    the site, the datalist and its structures: what the job's coordinator needs (``--site NAME=DATALIST``;
    the path is read on this computer by the site's app). Returns the datalist's path."""
    from claraseg.io import write_text_atomic

    from .jobs import write_datalist

    site = check_site_name(site)
    out = Path(folder) / site
    path = write_datalist(cases, out)
    structures = sorted({str(n) for c in cases for v, n in c.labels.items() if int(v) != 0})
    record = {"site": site, "datalist": str(path.resolve()), "cases": len(cases), "structures": structures,
              "command": f"claraseg federate create --site {site}={path.resolve()} ..."}
    write_text_atomic(out / "site.json", json.dumps(record, indent=1))
    return path


def export_scene_site(pairs, folder: str | os.PathLike, site: str) -> Path:
    """Export (volume, segmentation) pairs of the scene as this site's datalist (needs Slicer)."""
    from .export import export_case

    site = check_site_name(site)
    cases = [export_case(volume, seg, str(Path(folder) / site / "cases")) for volume, seg in pairs]
    return write_site_datalist(cases, folder, site)


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete events of a JSON-lines file (none when it does not exist yet)."""
    p = Path(path)
    if not p.is_file():
        return []
    with open(p, "rb") as f:
        return [e for e in (parse_line(line) for line in f if line.endswith(b"\n")) if e is not None]


def federated_progress(job_dir: str | os.PathLike, site: str | None = None) -> dict[str, Any]:
    """A federated job's progress from its events: ``state``, ``round`` (finished rounds), ``num_rounds``,
    ``he``, ``rows`` (per round: global model's Dice at the round's start, sites' Dice after local training,
    loss, seconds, bytes uploaded), ``site_rows`` (this site's rounds), ``final`` (the final global model's
    Dice per site), ``published`` and ``error``."""
    job_dir = Path(job_dir)
    out: dict[str, Any] = {"state": "created", "round": 0, "num_rounds": None, "he": None, "rows": [],
                           "site_rows": [], "final": None, "published": None, "error": None}
    for e in read_events(job_dir / "events.jsonl"):
        kind = e.get("event")
        if kind == "state":
            out["state"] = e.get("state", out["state"])
            out["num_rounds"] = e.get("num_rounds", out["num_rounds"])
            out["he"] = e.get("he", out["he"])
            if e.get("error"):
                out["error"] = str(e["error"])
        elif kind == "round":
            out["rows"].append({"round": e.get("round"), "global_dice": e.get("global_dice"),
                                "local_dice": e.get("local_dice"), "loss": e.get("loss"), "time_s": e.get("time_s"),
                                "bytes_up": e.get("bytes_up")})
            out["round"] = len(out["rows"])
        elif kind == "evaluation":
            out["final"] = {s: f.get("dice") for s, f in (e.get("sites") or {}).items()}
        elif kind == "published":
            out["published"] = e.get("name")
        elif kind == "error":
            out["error"] = f"{e.get('site', '')}: {e.get('message')}".strip(": ")
    if site:
        for e in read_events(job_dir / "sites" / check_site_name(site) / "events.jsonl"):
            if e.get("event") == "site_round":
                out["site_rows"].append({k: e.get(k) for k in ("round", "global_dice", "local_dice", "loss", "time_s")})
            elif e.get("event") == "error" and not out["error"]:
                out["error"] = f"{site}: {e.get('message')}"
    return out


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def progress_lines(progress: dict[str, Any]) -> list[str]:
    """What the panel shows: a status line, then one line per finished round, the final Dice and version."""
    n = progress["num_rounds"]
    head = f"{progress['state']}: round {progress['round']}/{n if n is not None else '?'}"
    if progress.get("he"):
        head += " (homomorphic encryption)"
    lines = [head]
    for r in progress["rows"]:
        mb = (r.get("bytes_up") or 0) / 1e6
        lines.append(f"round {r['round']}: global Dice {_f(r['global_dice'])} -> sites {_f(r['local_dice'])}, "
                     f"loss {_f(r['loss'])}, {_f(r['time_s'], 1)} s, {mb:.1f} MB up")
    for r in progress["site_rows"]:
        lines.append(f"  this site, round {r['round']}: {_f(r['global_dice'])} -> {_f(r['local_dice'])}")
    if progress["final"]:
        lines.append("final global model: " + ", ".join(f"{s} {_f(d)}" for s, d in sorted(progress["final"].items())))
    if progress["published"]:
        lines.append(f"published as {progress['published']}")
    if progress["error"]:
        lines.append(f"error: {progress['error']}")
    return lines


class FederatedPanel:
    """A collapsible "Federated (NVFlare)" section: export this scene as a site, follow a job folder."""

    def __init__(self, layout, selected_pairs) -> None:
        import ctk
        import qt

        self._pairs = selected_pairs
        box = ctk.ctkCollapsibleButton()
        box.text = "Federated (NVFlare)"
        box.collapsed = True
        form = qt.QFormLayout(box)
        self.site = qt.QLineEdit("site-1")
        form.addRow("Site name:", self.site)
        self.folder = ctk.ctkPathLineEdit()
        self.folder.filters = ctk.ctkPathLineEdit.Dirs
        form.addRow("Export folder:", self.folder)
        export = qt.QPushButton("Export the checked segmentations as this site's datalist")
        export.connect("clicked()", self.onExport)
        form.addRow(export)
        self.job = ctk.ctkPathLineEdit()
        self.job.filters = ctk.ctkPathLineEdit.Dirs
        form.addRow("Federated job folder:", self.job)
        self.text = qt.QPlainTextEdit()
        self.text.readOnly = True
        form.addRow(self.text)
        layout.addWidget(box)
        self.timer = qt.QTimer()
        self.timer.setInterval(2000)
        self.timer.connect("timeout()", self.refresh)
        self.timer.start()

    def onExport(self) -> None:
        try:
            path = export_scene_site(self._pairs(), self.folder.currentPath, self.site.text)
            self.text.setPlainText(f"wrote {path}\n" + json.loads((path.parent / "site.json").read_text())["command"])
        except Exception as e:
            self.text.setPlainText(f"export failed: {e}")

    def refresh(self) -> None:
        job = self.job.currentPath
        if job and (Path(job) / "events.jsonl").is_file():
            site = self.site.text if SITE_NAME.match(self.site.text or "") else None
            self.text.setPlainText("\n".join(progress_lines(federated_progress(job, site))))

    def stop(self) -> None:
        self.timer.stop()
