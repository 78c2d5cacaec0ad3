"""The in-process trial executor: trains a bundle's network on the shared training loop and reports Dice.

It reads the same bundle ids as a fine-tune job (``network_def``, ``loss``, ``optimizer``,
``train#preprocessing``, ``validate#preprocessing``, ``training#{max_iterations,val_interval,batch_size,
seed}``) and writes the same JSON-lines events (``iteration``, ``validation`` with ``dice``, ``state``),
so the AutoML controller treats both alike. The loop is :class:`claraseg.train.loop.TrainingLoop`, the one
fine-tune jobs and pre-training run; what this runner leaves out is the job around it (data checks and
label mapping, checkpoints and resume, publishing), so a trial starts in a fraction of the time
(``--runner tiny``).

Run as ``python -m claraseg.automl.tinyloop TRIAL_JSON``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from claraseg.automl.searchspace import strip_search

_SETTINGS = {"max_iterations": 100, "val_interval": 50, "batch_size": 1, "seed": 0}


def run_trial(spec: dict[str, Any]) -> float:
    """Train and validate one trial described by ``spec`` (see :class:`claraseg.automl.runners.TrialSpec`)."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import CacheDataset
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot
    from monai.utils import set_determinism

    from claraseg.automl.bundle import read_config
    from claraseg.train.events import EventWriter
    from claraseg.train.loop import EventsHandler, LoaderSource, TrainingLoop, ValidationHandler

    events = EventWriter(Path(spec["events"]))
    torch.set_num_threads(int(spec.get("threads", 1)))
    bundle = Path(spec["bundle"])
    parser = ConfigParser(strip_search(read_config(bundle)))
    parser["bundle_root"] = str(bundle)
    for key, value in spec.get("overrides", {}).items():
        parser[key] = value
    settings = dict(_SETTINGS)
    if "training" in parser:
        settings.update({k: v for k, v in parser.get_parsed_content("training").items() if k in _SETTINGS})
    seed = int(settings["seed"])
    set_determinism(seed=seed)
    from claraseg.backend import pick_device

    device = torch.device(pick_device(os.environ.get("CLARASEG_TRIAL_DEVICE") or spec.get("device") or "cpu"))
    events.state("preparing")
    net = parser.get_parsed_content("network_def").to(device)
    optimizer = parser.get_parsed_content("optimizer")
    loss_fn = parser.get_parsed_content("loss")
    datalist_path = Path(spec["data"])
    datalist = json.loads(datalist_path.read_text())
    base = datalist_path.parent

    def items(split: str) -> list[dict[str, str]]:
        return [{k: str(base / v) for k, v in item.items()} for item in datalist[split]]

    train_ds = CacheDataset(items("training"), parser.get_parsed_content("train#preprocessing"), progress=False)
    val_ds = CacheDataset(items("validation"), parser.get_parsed_content("validate#preprocessing"), progress=False)
    metric = DiceMetric(include_background=False, reduction="mean")
    max_it, val_every = int(settings["max_iterations"]), int(settings["val_interval"])

    def validate(loop: TrainingLoop) -> float:
        net.eval()
        metric.reset()
        with torch.no_grad():
            for item in val_ds:
                logits = net(item["image"][None].to(device))
                n = logits.shape[1]
                pred = one_hot(logits.argmax(1, keepdim=True), n)
                metric(pred, one_hot(item["label"][None].to(device).long(), n))
        net.train()
        dice = float(metric.aggregate().item())
        events.emit("validation", iteration=loop.state.iteration, dice=round(dice, 5))
        return dice

    def step_loss(model, batch):
        return loss_fn(model(batch["image"].to(device)), batch["label"].to(device))

    validation = ValidationHandler(validate, every=val_every)
    loop = TrainingLoop(net, optimizer, step_loss, LoaderSource(train_ds, int(settings["batch_size"]), seed),
                        device=device, max_iterations=max_it,
                        handlers=[EventsHandler(events, round_loss=5), validation])
    events.state("training", max_iterations=max_it)
    loop.run()
    best = validation.best["dice"]
    events.state("completed", best_dice=round(best, 5))
    return best


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    try:
        run_trial(spec)
    except Exception as e:  # report every failure as an event, then exit non-zero
        from claraseg.train.events import EventWriter

        events = EventWriter(Path(spec["events"]))
        events.emit("error", type=type(e).__name__, code="internal_error", message=str(e),
                    traceback=traceback.format_exc(limit=5))
        events.state("failed")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
