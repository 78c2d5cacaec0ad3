"""A small, self-contained trial executor: trains a bundle's network in this process and reports Dice.

It reads the same bundle ids as a fine-tune job (``network_def``, ``loss``, ``optimizer``,
``train#preprocessing``, ``validate#preprocessing``, ``training#{max_iterations,val_interval,batch_size,
seed}``) and writes the same JSON-lines events (``iteration``, ``validation`` with ``dice``, ``state``),
so the AutoML controller treats both alike. It exists so that AutoML runs without the training part
(``--runner tiny``); it has no checkpoints, resume or publishing.

Run as ``python -m claraseg.automl.tinyloop TRIAL_JSON``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from claraseg.automl.searchspace import strip_search

_SETTINGS = {"max_iterations": 100, "val_interval": 50, "batch_size": 1, "seed": 0}


class _Events:
    """Appends events to ``events.jsonl`` in the training part's schema."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "t": round(time.time(), 3), **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def run_trial(spec: dict[str, Any]) -> float:
    """Train and validate one trial described by ``spec`` (see :class:`claraseg.automl.runners.TrialSpec`)."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import CacheDataset, DataLoader
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot
    from monai.utils import set_determinism

    from claraseg.automl.bundle import read_config

    events = _Events(Path(spec["events"]))
    torch.set_num_threads(int(spec.get("threads", 1)))
    bundle = Path(spec["bundle"])
    parser = ConfigParser(strip_search(read_config(bundle)))
    parser["bundle_root"] = str(bundle)
    for key, value in spec.get("overrides", {}).items():
        parser[key] = value
    settings = dict(_SETTINGS)
    if "training" in parser:
        settings.update({k: v for k, v in parser.get_parsed_content("training").items() if k in _SETTINGS})
    set_determinism(seed=int(settings["seed"]))
    device = torch.device(os.environ.get("CLARASEG_TRIAL_DEVICE") or spec.get("device") or "cpu")
    events.emit("state", state="preparing")
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
    loader = DataLoader(train_ds, batch_size=int(settings["batch_size"]), shuffle=True, num_workers=0)
    metric = DiceMetric(include_background=False, reduction="mean")
    max_it, val_every = int(settings["max_iterations"]), int(settings["val_interval"])

    def validate() -> float:
        net.eval()
        metric.reset()
        with torch.no_grad():
            for item in val_ds:
                logits = net(item["image"][None].to(device))
                n = logits.shape[1]
                pred = one_hot(logits.argmax(1, keepdim=True), n)
                metric(pred, one_hot(item["label"][None].to(device).long(), n))
        net.train()
        return float(metric.aggregate().item())

    events.emit("state", state="training", max_iterations=max_it)
    iteration, best = 0, -1.0
    start = time.time()
    while iteration < max_it:
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(net(batch["image"].to(device)), batch["label"].to(device))
            loss.backward()
            optimizer.step()
            iteration += 1
            events.emit("iteration", iteration=iteration, max_iterations=max_it, loss=round(loss.item(), 5),
                        eta_s=round((time.time() - start) / iteration * (max_it - iteration), 1))
            if iteration % val_every == 0 or iteration == max_it:
                dice = validate()
                best = max(best, dice)
                events.emit("validation", iteration=iteration, dice=round(dice, 5))
            if iteration >= max_it:
                break
    events.emit("state", state="completed", best_dice=round(best, 5))
    return best


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    try:
        run_trial(spec)
    except Exception as e:  # report every failure as an event, then exit non-zero
        events = _Events(Path(spec["events"]))
        events.emit("error", type=type(e).__name__, message=str(e), traceback=traceback.format_exc(limit=5))
        events.emit("state", state="failed")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
