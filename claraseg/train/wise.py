"""Weight-space ensembling of a fine-tune (WiSE-FT, Wortsman et al., CVPR 2022): the candidates a job
with ``training#wise`` validates lie on the line from the starting weights to the weights at the end of
training (:class:`claraseg.train.runner.Runner` chooses among them; ``bench-adapt --test-alphas`` tests
them)."""

from __future__ import annotations

import torch

#: The interpolation weights ``training#wise: "auto"`` chooses among (1: the weights at the end of training).
WISE_ALPHAS = (0.25, 0.5, 0.75, 1.0)


def wise_alphas(setting: float | str | None) -> tuple[float, ...]:
    """The interpolation weights a job validates for ``training#wise``: none (off), the one given, or
    :data:`WISE_ALPHAS` for ``"auto"``."""
    if setting is None:
        return ()
    return WISE_ALPHAS if setting == "auto" else (float(setting),)


def interpolate_weights(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                        alpha: float) -> dict[str, torch.Tensor]:
    """``start + alpha * (end - start)`` for every floating-point tensor (weights and normalisation
    statistics); the others (e.g. counters) are taken from ``end``."""
    return {k: (s + alpha * (end[k] - s)).to(end[k].dtype) if end[k].is_floating_point() else end[k].clone()
            for k, s in start.items()}
