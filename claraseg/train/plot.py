"""The PNG of a job's training curves (loss, learning rate, validation Dice against the starting model)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_curves(events: list[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw loss and learning rate per iteration and the validation Dice (baseline dashed) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [e for e in events if e.get("event") == "iteration"]
    vals = [e for e in events if e.get("event") == "validation" and not e.get("baseline")]
    base = [e for e in events if e.get("event") == "validation" and e.get("baseline")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([e["iteration"] for e in its], [e["loss"] for e in its], lw=1)
    axes[0].set(title="training loss", xlabel="iteration")
    axes[1].plot([e["iteration"] for e in its], [e["lr"] for e in its], lw=1, color="tab:orange")
    axes[1].set(title="learning rate", xlabel="iteration")
    axes[2].plot([e["iteration"] for e in vals], [e["dice"] for e in vals], "o-", color="tab:green", label="fine-tuned")
    if base:
        axes[2].axhline(base[0]["dice"], ls="--", color="gray", label="starting model")
    axes[2].set(title="validation Dice (held-out)", xlabel="iteration", ylim=(0, 1))
    axes[2].legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return out
