"""The PNG of a job's training curves (loss, learning rate, validation Dice against the starting model)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from claraseg.io import atomic_path


def plot_curves(events: list[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw loss and learning rate per iteration and the validation Dice (baseline dashed) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [e for e in events if e.get("event") == "iteration"]
    vals = [e for e in events if e.get("event") == "validation" and not e.get("baseline")]
    base = [e for e in events if e.get("event") == "validation" and e.get("baseline")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    x, loss = [e["iteration"] for e in its], [e["loss"] for e in its]
    axes[0].plot(x, loss, lw=0.8, alpha=0.5, label="per iteration")
    if len(loss) >= 10:  # a moving mean shows the trend through the per-batch noise
        window = max(5, len(loss) // 20)
        smooth = [sum(loss[max(0, i - window + 1):i + 1]) / len(loss[max(0, i - window + 1):i + 1]) for i in range(len(loss))]
        axes[0].plot(x, smooth, lw=1.6, color="tab:blue", label=f"mean of {window}")
        axes[0].legend(loc="upper right")
    axes[0].set(title="training loss", xlabel="iteration")
    axes[1].plot([e["iteration"] for e in its], [e["lr"] for e in its], lw=1, color="tab:orange")
    axes[1].set(title="learning rate", xlabel="iteration")
    start = [(0, base[0]["dice"])] if base else []
    points = start + [(e["iteration"], e["dice"]) for e in vals]
    axes[2].plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:green", label="fine-tuned")
    if base:
        axes[2].axhline(base[0]["dice"], ls="--", color="gray", label="starting model")
    axes[2].set(title="validation Dice (held-out)", xlabel="iteration", ylim=(0, 1))
    axes[2].legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    try:
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return out


def plot_adaptation(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Dice after each click before and after fine-tuning (``claraseg train bench-adapt``): the means
    bold, each structure thin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = list(range(1, int(result["interactions"]) + 1))
    for row in result["per_structure"].values():
        ax.plot(x, row["before"], color="0.7", lw=0.8, ls="--")
        ax.plot(x, row["after"], color="tab:blue" if row.get("tuned", True) else "tab:orange", lw=0.8, alpha=0.5)
    ax.plot(x, result["mean_dice_curve"]["before"], "k--o", label="tuned, before (starting model)")
    ax.plot(x, result["mean_dice_curve"]["after"], "b-o",
            label=f"tuned, after ({result['published'] or 'nothing published'}, {result['iterations']} iterations)")
    untuned = result.get("untuned_summary") or {}
    if untuned:
        ax.plot(x, untuned["mean_dice_curve"]["before"], "--s", color="0.4", label="untuned, before")
        ax.plot(x, untuned["mean_dice_curve"]["after"], "-s", color="tab:orange", label="untuned, after")
    ax.set(xlabel="click", ylabel="Dice on held-out slices", ylim=(0, 1), xticks=x)
    ax.legend(loc="lower right", fontsize=8)
    tuned = sum(1 for r in result["per_structure"].values() if r.get("tuned", True))
    ax.set_title(f"Adaptation: {tuned} tuned, {len(result['per_structure']) - tuned} untuned structures "
                 "(means; thin lines: per structure)", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
