"""AutoML outputs: the trials table, the optimisation-history plot, the best overlay and a summary line.

Everything is read back from the Optuna study, so a report can be written by any controller, or later
with ``claraseg automl --report-only``, and shows the trials of every worker machine.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from claraseg.automl.searchspace import SearchSpace, apply_overrides
from claraseg.io import atomic_path, write_text_atomic

#: Columns of the trials table before the parameters.
COLUMNS = ("number", "state", "dice", "duration_s", "default", "retry_of", "pruned_at", "slot", "host", "error")


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per started trial (queued ones are left out): state, Dice, duration, parameters."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        duration = None
        if t.datetime_start is not None and t.datetime_complete is not None:
            duration = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.state == TrialState.PRUNED and t.intermediate_values
            else None)
        state = t.state.name.lower()
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            state = "fail (retried)"
        row = {"number": t.number, "state": state, "dice": None if value is None else round(float(value), 4),
               "duration_s": duration, "default": bool(t.user_attrs.get("default")),
               "retry_of": t.user_attrs.get("retry_of"), "pruned_at": t.user_attrs.get("pruned_at"),
               "slot": t.user_attrs.get("slot"), "host": t.user_attrs.get("host"), "error": t.user_attrs.get("error")}
        row.update({f"param:{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


def write_tables(rows: list[dict[str, Any]], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``trials.csv``, ``trials.json`` and ``trials.md``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = sorted({k for r in rows for k in r if k.startswith("param:")})
    columns = [*COLUMNS, *params]
    paths = {"csv": out / "trials.csv", "json": out / "trials.json", "md": out / "trials.md"}
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in columns})
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as f:
        f.write(text.getvalue())
    write_text_atomic(paths["json"], json.dumps(rows, indent=1, default=str))
    shown = [c for c in columns if c not in ("host", "error") and any(r.get(c) not in (None, False) for r in rows)]
    lines = ["| " + " | ".join(c.replace("param:", "") for c in shown) + " |", "|" + "---|" * len(shown)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in shown) + " |")
    write_text_atomic(paths["md"], "\n".join(lines) + "\n")
    return paths


def _cell(v: Any) -> str:
    if v is None or v is False:
        return ""
    if v is True:
        return "yes"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def plot_history(study, path: str | os.PathLike) -> Path:
    """The optimisation history as a PNG: each trial's Dice by trial number, pruned and failed marked,
    the best-so-far line, and the default settings' Dice as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = trial_rows(study)
    fig, ax = plt.subplots(figsize=(8.5, 4), dpi=100)
    styles = {"complete": ("o", "tab:blue", "completed"), "pruned": ("v", "tab:orange", "pruned")}
    for state, (marker, color, label) in styles.items():
        pts = [(r["number"], r["dice"]) for r in rows if r["state"] == state and r["dice"] is not None]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, label=label, zorder=3)
    for state, color, label in (("fail", "tab:red", "failed"), ("fail (retried)", "tab:gray", "interrupted, re-run")):
        xs_ = [r["number"] for r in rows if r["state"] == state]
        if xs_:
            ax.scatter(xs_, [0.0] * len(xs_), marker="x", color=color, label=label, zorder=3)
    best, xs, ys = None, [], []
    for r in sorted(rows, key=lambda r: r["number"]):
        if r["state"] == "complete" and r["dice"] is not None:
            best = r["dice"] if best is None else max(best, r["dice"])
        if best is not None:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    default = [r["dice"] for r in rows if r["default"] and r["state"] == "complete"]
    if default:
        ax.axhline(default[0], color="gray", linestyle="--", label="default settings")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation Dice")
    ax.set_ylim(bottom=0)
    ax.set_title(f"AutoML: {study.study_name}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def summarize(study) -> dict[str, Any]:
    """Best and default trials, counts by state, and the one-line summary."""
    rows = trial_rows(study)
    done = [r for r in rows if r["state"] == "complete" and r["dice"] is not None]
    best = max(done, key=lambda r: r["dice"]) if done else None
    default = next((r for r in done if r["default"]), None)
    counts: dict[str, int] = {}
    for r in rows:
        key = r["state"].split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
    counted = sum(v for k, v in counts.items() if k != "running") - sum(1 for r in rows if r["state"] == "fail (retried)")
    if best is None:
        line = f"no completed trial yet ({counted} finished: {counts})"
    else:
        params = ", ".join(f"{k[6:]}={_cell(v)}" for k, v in best.items() if k.startswith("param:"))
        line = f"best validation Dice {best['dice']:.4f} (trial {best['number']}: {params})"
        if default is not None:
            line += (f" vs default settings {default['dice']:.4f} (trial {default['number']}): "
                     f"{best['dice'] - default['dice']:+.4f}")
        line += (f"; {counted} trials: {counts.get('complete', 0)} completed, {counts.get('pruned', 0)} pruned, "
                 f"{counted - counts.get('complete', 0) - counts.get('pruned', 0)} failed")
    return {"best": best, "default": default, "counts": counts, "finished": counted, "line": line}


def export_best(study, space: SearchSpace, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the best trial's overrides (``best_overlay.json``, usable as a fine-tune job's overrides file),
    its parameters and Dice (``best_trial.json``) and the merged training config (``best_train.json``)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return {}
    best = max(done, key=lambda t: t.value)
    overrides = space.overrides(best.params)
    out = Path(out_dir)
    paths = {"overlay": out / "best_overlay.json", "trial": out / "best_trial.json", "config": out / "best_train.json"}
    write_text_atomic(paths["overlay"], json.dumps(overrides, indent=1, default=str))
    write_text_atomic(paths["trial"], json.dumps({"trial": best.number, "dice": best.value, "params": best.params,
                                                  "user_attrs": best.user_attrs}, indent=1, default=str))
    write_text_atomic(paths["config"], json.dumps(apply_overrides(space.config, overrides), indent=1))
    return paths
