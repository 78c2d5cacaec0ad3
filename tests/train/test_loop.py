"""The shared training loop's own rules: steps with gradient accumulation, the learning-rate schedule,
budgets, and the validation handler's best checkpoint under the max-label-drop rule."""

from __future__ import annotations

import torch

from claraseg.train.loop import (
    CheckpointHandler,
    Handler,
    StreamSource,
    TrainingLoop,
    ValidationHandler,
    cosine_schedule,
)


def _loop(max_iterations=6, **kw):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(4, 3)

    def step(model, batch):
        return (model(batch) ** 2).mean()

    return TrainingLoop(net, opt, step, StreamSource(lambda: x), max_iterations=max_iterations, **kw)


class Record(Handler):
    def __init__(self):
        self.steps, self.lrs = [], []

    def iteration_completed(self, loop):
        self.steps.append(loop.state.iteration)
        self.lrs.append(loop.state.lr)


def test_steps_accumulation_and_schedule():
    rec = Record()
    loop = _loop(max_iterations=4, grad_accumulation=3, lr_schedule=cosine_schedule(1.0), handlers=[rec])
    loop.run()
    assert rec.steps == [1, 2, 3, 4] and loop.state.cursor == 12  # 3 batches per optimizer step
    assert rec.lrs[0] == 1.0 and rec.lrs == sorted(rec.lrs, reverse=True) and rec.lrs[-1] > 0.05


def test_validation_keeps_the_best_eligible_score_and_checkpoints_skip_the_last_step():
    scores = iter([0.5, 0.9, 0.6])
    kept, saved = [], []
    validation = ValidationHandler(lambda loop: next(scores), every=2, on_best=lambda loop, s: kept.append(s),
                                   eligible=lambda loop, s: s != 0.9)
    loop = _loop(max_iterations=6, handlers=[validation, CheckpointHandler(lambda lp: saved.append(lp.state.iteration),
                                                                           every=2)])
    loop.run()
    # Validations at steps 2 and 4 and once at the end (6); 0.9 was refused as best.
    assert [h["iteration"] for h in validation.history] == [2, 4, 6]
    assert kept == [0.5, 0.6] and validation.best == {"dice": 0.6, "iteration": 6}
    assert saved == [2, 4]


def test_time_budget_ends_the_run():
    loop = _loop(max_iterations=float("inf"), max_time_s=0.2)
    state = loop.run()
    assert state.iteration >= 1 and state.max_iterations == state.iteration and state.elapsed_s < 5
