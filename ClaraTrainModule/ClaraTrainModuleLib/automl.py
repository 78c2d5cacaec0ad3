"""The AutoML tab: start ``claraseg automl`` as its own process and read its report files.

The search (``claraseg.automl``) keeps ``trials.json`` current after each trial and writes
``summary.txt`` and ``best_overlay.json`` at the end (docs/automl.md); the tab polls those files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claraseg.errors import ConfigError

#: Columns of the trials table, in order (parameters follow).
TABLE_COLUMNS = ("number", "state", "dice", "duration_s", "default")


def automl_available() -> tuple[bool, str]:
    """(available, why not): AutoML needs ``claraseg.automl`` and Optuna."""
    if importlib.util.find_spec("claraseg.automl") is None:
        return False, "AutoML is not available: this claraseg has no automl part"
    if importlib.util.find_spec("optuna") is None:
        return False, "AutoML needs Optuna: install it (pip install optuna) into Slicer's Python"
    return True, ""


@dataclass
class AutoMLSettings:
    """The tab's choices (the ``claraseg automl`` flags)."""

    bundle: str
    data: str
    job_dir: str
    trials: int = 8
    workers: int = 1
    timeout_s: float | None = None
    storage: str = ""

    def validate(self) -> AutoMLSettings:
        problems = []
        if self.trials < 1:
            problems.append("trials must be at least 1")
        if self.workers < 1:
            problems.append("parallel workers must be at least 1")
        if not Path(self.bundle).is_dir():
            problems.append(f"bundle folder {self.bundle} does not exist")
        if not Path(self.data).is_file():
            problems.append(f"datalist {self.data} does not exist: export training data first")
        if problems:
            raise ConfigError("AutoML settings: " + "; ".join(problems) + ".")
        return self

    def command(self, python: str | None = None) -> list[str]:
        """The process to start (``python -m claraseg automl ...``)."""
        cmd = [python or sys.executable, "-m", "claraseg", "automl", "--bundle", self.bundle, "--data", self.data,
               "--job-dir", self.job_dir, "--trials", str(self.trials), "--workers", str(self.workers)]
        if self.timeout_s:
            cmd += ["--timeout", str(self.timeout_s)]
        if self.storage:
            cmd += ["--storage", self.storage]
        return cmd


def read_trials(job_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``trials.json`` (empty until the first trial ends; a half-written file reads as empty)."""
    p = Path(job_dir) / "trials.json"
    try:
        rows = json.loads(p.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells for the trials table (parameters as extra columns)."""
    params = sorted({k for r in rows for k in r if k.startswith("param:")})
    header = [*TABLE_COLUMNS, *(p[6:] for p in params)]

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    body = [[cell(r.get(c)) for c in (*TABLE_COLUMNS, *params)] for r in rows]
    return header, body


def best_trial(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed trial with the highest Dice."""
    done = [r for r in rows if r.get("state") == "complete" and r.get("dice") is not None]
    return max(done, key=lambda r: r["dice"]) if done else None


def best_text(rows: Sequence[dict[str, Any]], summary: str = "") -> str:
    """The 'best' line of the AutoML tab: the search's own summary when it ended, else the best so far."""
    if summary:
        return summary
    best = best_trial(rows)
    return f"best so far: trial {best['number']}, Dice {best['dice']:.4f}" if best else "-"


def best_overrides(job_dir: str | os.PathLike) -> dict[str, Any]:
    """The best trial's config overrides (``best_overlay.json``), to apply to a fine-tune job."""
    p = Path(job_dir) / "best_overlay.json"
    if not p.is_file():
        raise ConfigError("no best result yet: the search writes it when it ends")
    data = json.loads(p.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{p} is not an overrides object")
    return data


def summary_line(job_dir: str | os.PathLike) -> str:
    p = Path(job_dir) / "summary.txt"
    return p.read_text().strip() if p.is_file() else ""


def last_log_line(path: str | os.PathLike) -> str:
    """The last non-empty line of the search's log: what went wrong, for the status line."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "see the log"
    return lines[-1][:300] if lines else "see the log"


def describe_search_space(bundle: str | os.PathLike) -> list[str]:
    """One line per searched setting of a bundle's ``configs/train.json`` (what the tab shows before a search)."""
    from claraseg.automl.bundle import read_config
    from claraseg.automl.searchspace import parse_search_space

    space = parse_search_space(read_config(bundle))
    lines = []
    for e in space.describe():
        if e["type"] == "enum":
            values = ", ".join(str(c) for c in e["choices"])
            lines.append(f"{e['name']}: one of {values} (default {e['default']})")
        else:
            scale = ", log scale" if e.get("log") else ""
            lines.append(f"{e['name']}: {e['low']:g} to {e['high']:g}{scale} (default {e['default']:g})")
    if not lines:
        raise ConfigError(f"{bundle}: its configs/train.json declares no 'search' elements, so there is nothing to search")
    return lines
