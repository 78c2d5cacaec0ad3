"""The shared training loop's own rules: steps with gradient accumulation, the learning-rate schedule,
budgets, and the validation handler's best checkpoint under the max-label-drop rule."""

from __future__ import annotations

import pytest
import torch

from claraseg.errors import ConfigError
from claraseg.train.loop import (
    CheckpointHandler,
    Handler,
    StreamSource,
    TrainingLoop,
    ValidationHandler,
    amp_dtype,
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


# ----- mixed precision ----------------------------------------------------------------------------------
def test_amp_dtype_is_chosen_per_device():
    """bfloat16 where the GPU has it natively, else float16; a named dtype as named; never on CPU."""
    assert amp_dtype("cuda", True, bf16_supported=True) is torch.bfloat16
    assert amp_dtype("cuda:1", "auto", bf16_supported=False) is torch.float16
    assert amp_dtype("cuda", "float16", bf16_supported=True) is torch.float16
    assert amp_dtype("cuda", "bfloat16", bf16_supported=False) is torch.bfloat16
    assert amp_dtype("cuda", False) is None and amp_dtype("cuda", None) is None
    for amp in (True, "auto", "float16", "bfloat16"):
        assert amp_dtype("cpu", amp) is None
    with pytest.raises(ConfigError, match="amp = 'int8'"):
        amp_dtype("cuda", "int8", bf16_supported=True)


def _weights(loop):
    return torch.cat([p.detach().flatten() for p in loop.model.parameters()])


def test_amp_is_ignored_on_cpu_and_results_stay_identical():
    """Asking for AMP on CPU trains in float32, without a scaler: the very weights of a run without it."""
    plain = _amp_loop("cpu", [], amp=False)
    plain.run()
    for amp in (True, "auto", "float16", "bfloat16"):
        seen = []
        loop = _amp_loop("cpu", seen, amp=amp)
        assert loop.amp_dtype is None and loop.scaler is None and not loop.amp
        loop.run()
        assert set(seen) == {torch.float32} and torch.equal(_weights(loop), _weights(plain))


def _amp_loop(device, seen, amp=False, force=None, accumulation=1):
    """A small conv net's 5-step loop on ``device`` (``amp`` as a job asks for it); ``force`` = (dtype,
    scaled) replaces the loop's AMP plan with that autocast dtype (and a GradScaler when ``scaled``).
    ``seen`` collects the dtypes of the network's output inside the steps."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x = torch.randn(2, 2, 6, 6, 6, device=device)

    def step(model, batch):
        out = model(batch)
        seen.append(out.dtype)
        return (out.float() - 1.0).pow(2).mean()

    loop = TrainingLoop(net, opt, step, StreamSource(lambda: x), device=device, max_iterations=5,
                        grad_accumulation=accumulation, amp=amp)
    if force is not None:
        loop.amp_dtype = force[0]
        loop.scaler = torch.amp.GradScaler(torch.device(device).type) if force[1] else None
    return loop


def test_amp_step_paths_run_under_cpu_autocast():
    """The loop's AMP step (autocast, then the GradScaler's scale/step/update or a plain step) exercised with
    CPU autocast in bfloat16: the forward runs in bfloat16, and the scaled steps (gradient accumulation
    included) land on the same weights as the unscaled ones (the scaler unscales before stepping)."""
    seen_plain, seen_scaled, seen_fp32 = [], [], []
    plain = _amp_loop("cpu", seen_plain, force=(torch.bfloat16, False), accumulation=2)
    plain.run()
    scaled = _amp_loop("cpu", seen_scaled, force=(torch.bfloat16, True), accumulation=2)
    scaled.run()
    fp32 = _amp_loop("cpu", seen_fp32, accumulation=2)
    fp32.run()
    assert set(seen_plain) == set(seen_scaled) == {torch.bfloat16} and set(seen_fp32) == {torch.float32}
    assert scaled.scaler.get_scale() == 65536.0  # no overflow skipped a step
    moved = (_weights(fp32) - _weights(_amp_loop("cpu", []))).abs().max()
    assert moved > 1e-3 and torch.isfinite(_weights(scaled)).all()
    assert torch.allclose(_weights(scaled), _weights(plain), atol=1e-6)
    assert (_weights(plain) - _weights(fp32)).abs().max() < 0.1 * moved  # bfloat16 follows float32 closely


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
@pytest.mark.parametrize("amp", ["float16", "bfloat16", True])
def test_amp_trains_on_cuda(amp):
    """On CUDA the loop's own choice: float16 with a GradScaler, bfloat16 without; training follows float32."""
    if amp == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16 (torch.cuda.is_bf16_supported() is false)")
    dtype = amp_dtype("cuda", amp)
    seen = []
    loop = _amp_loop("cuda", seen, amp=amp)
    assert loop.amp_dtype is dtype and (loop.scaler is not None) == (dtype is torch.float16)
    loop.run()
    fp32 = _amp_loop("cuda", [])
    fp32.run()
    assert set(seen) == {dtype} and torch.isfinite(_weights(loop)).all()
    moved = (_weights(fp32) - _weights(_amp_loop("cuda", []))).abs().max()
    assert moved > 1e-3 and (_weights(loop) - _weights(fp32)).abs().max() < 0.1 * moved
