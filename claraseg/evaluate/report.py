"""Reports: the JSON written by ``claraseg eval`` and its plot of Dice against interactions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from claraseg.io import write_text_atomic


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a report as indented JSON (atomically, parents created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(p, json.dumps(report, indent=1, default=_jsonable) + "\n")
    return p


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def runs_of(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, run) pairs of a report: the main run, then the baseline when there is one."""
    runs = [(report.get("model", {}).get("name") or "ours", report)]
    if report.get("baseline"):
        runs.append((f"{report['baseline']['method']} (baseline)", report["baseline"]))
    return runs


def plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG of Dice after each interaction: the mean per run (left) and every structure (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    fig, (ax_mean, ax_all) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    for (name, run), colour in zip(runs_of(report), colours):
        curve = run["summary"].get("mean_dice_curve") or []
        x = list(range(1, len(curve) + 1))
        noc = run["summary"].get("mean_noc85")
        ax_mean.plot(x, curve, "-o", ms=3, color=colour,
                     label=f"{name}: mean of {run['summary']['structures']} (NoC@85 {noc})")
        for i, s in enumerate(run["structures"]):
            ax_all.plot(range(1, len(s["dice"]) + 1), s["dice"], "-", lw=0.8, alpha=0.6, color=colour,
                        label=name if i == 0 else None)
    for ax, title in ((ax_mean, "mean Dice"), (ax_all, "per structure")):
        ax.axhline(0.85, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("interaction (DEXTR3D: 1 = extreme points)")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1.0)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(report.get("title") or "click-protocol evaluation", fontsize=10)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: Dice at 1/3/5/10, NoC@85 and latency per run."""
    lines = []
    for name, run in runs_of(report):
        s = run["summary"]
        at = ", ".join(f"@{k} {v:.3f}" for k, v in s["mean_dice_at"].items() if v is not None)
        lat = s["latency_ms"]
        lines.append(f"{name}: {s['structures']} structures; mean Dice {at}; NoC@85 {s['mean_noc85']}; "
                     f"AUC {s.get('mean_auc')}; latency p50 {lat['p50']} ms, p95 {lat['p95']} ms")
    if report.get("comparison"):
        lines.append(f"ahead of the baseline at every interaction: {report['comparison']['ahead_at_every_interaction']}")
    return "\n".join(lines)
