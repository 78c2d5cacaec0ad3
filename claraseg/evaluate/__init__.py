"""Click-protocol evaluation (ANCHORS.md), classical baselines, latency benchmarks, reports and plots."""

from claraseg.evaluate.classical import METHODS, ClassicalBackend
from claraseg.evaluate.protocol import (
    NOC_CAP,
    StructureResult,
    dice,
    dice_auc,
    extreme_points,
    largest_cross_section,
    next_click,
    number_of_clicks,
    run_structure,
)

__all__ = [
    "METHODS", "NOC_CAP", "ClassicalBackend", "StructureResult", "dice", "dice_auc", "extreme_points",
    "largest_cross_section", "next_click", "number_of_clicks", "run_structure",
]
