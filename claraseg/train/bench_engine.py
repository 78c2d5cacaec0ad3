"""``claraseg train bench-engine``: the shared training loop against MONAI's ``SupervisedTrainer`` on the
same tiny task, iterations per second on CPU.

Both train the same seeded network (a 3D U-Net 8-16-32) with the same optimizer and loss on the same
items (32^3 crops of a phantom with a random flip, batch 2, MONAI ``Dataset`` + ``DataLoader``) and
write the same ``iteration`` event per step (JSON lines, :class:`~claraseg.train.events.EventWriter`).
``SupervisedTrainer`` runs with ``decollate=False`` and no post-processing, its cheapest setting. The runs
alternate (ours, MONAI, ours, ...) so that a machine load that changes over time hits both alike; the
figures are the medians over the repeats. Needs ``pytorch-ignite`` (MONAI's engines are built on it).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: The tiny task: crop size, items, batch size.
CROP, ITEMS, BATCH = 32, 8, 2


def _task(seed: int = 0):
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import RandFlipd

    from claraseg.io import make_phantom

    image, label = make_phantom(seed=3, size_ijk=(64, 64, 48))
    img = np.asarray(image.array, np.float32)
    img = (img - img.mean()) / (img.std() + 1e-6)
    lab = (np.asarray(label.array) > 0).astype(np.float32)
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(ITEMS):
        k, j, i = (int(rng.integers(0, s - CROP + 1)) for s in img.shape)
        sl = (slice(k, k + CROP), slice(j, j + CROP), slice(i, i + CROP))
        items.append({"image": torch.from_numpy(img[sl][None].copy()), "label": torch.from_numpy(lab[sl][None].copy())})
    transform = RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0)

    def network():
        torch.manual_seed(seed)
        return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                    num_res_units=0)

    return items, transform, network, DiceCELoss(to_onehot_y=True, softmax=True)


def run_ours(iterations: int, events_path: Path, seed: int = 0) -> float:
    """Iterations/s of :class:`~claraseg.train.loop.TrainingLoop` (wall time of ``run``)."""
    import torch
    from monai.data import Dataset

    from claraseg.train.events import EventWriter
    from claraseg.train.loop import EventsHandler, LoaderSource, TrainingLoop

    items, transform, network, loss = _task(seed)
    net = network()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loop = TrainingLoop(net, opt, lambda m, b: loss(m(b["image"]), b["label"]),
                        LoaderSource(Dataset(items, transform), BATCH, seed), max_iterations=iterations,
                        handlers=[EventsHandler(EventWriter(events_path))])
    t0 = time.perf_counter()
    loop.run()
    return iterations / (time.perf_counter() - t0)


def run_monai(iterations: int, events_path: Path, seed: int = 0) -> float:
    """Iterations/s of MONAI's ``SupervisedTrainer`` with a handler writing the same events."""
    import torch
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer

    from claraseg.train.events import EventWriter

    items, transform, network, loss = _task(seed)
    transform.set_random_state(seed=seed)
    net = network()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = DataLoader(Dataset(items, transform), batch_size=BATCH, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    epochs = -(-iterations // (ITEMS // BATCH))
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
                                optimizer=opt, loss_function=loss, inferer=SimpleInferer(), decollate=False,
                                amp=False)
    writer = EventWriter(events_path)
    started = time.time()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _log(engine) -> None:
        it = engine.state.iteration
        rate = it / max(time.time() - started, 1e-6)
        writer.emit("iteration", iteration=it, max_iterations=iterations, epoch=engine.state.epoch - 1,
                    loss=float(engine.state.output["loss"]), lr=opt.param_groups[0]["lr"], its_per_s=round(rate, 4),
                    eta_s=round((iterations - it) / rate, 1))
        if it >= iterations:
            engine.terminate()

    t0 = time.perf_counter()
    trainer.run()
    return iterations / (time.perf_counter() - t0)


def bench_engine(iterations: int = 60, repeats: int = 5, threads: int = 1) -> dict[str, Any]:
    """Alternating runs of both loops; medians and the ratio (ours / MONAI)."""
    import torch

    from claraseg.train.bench import machine

    torch.set_num_threads(threads)
    runs: dict[str, list[float]] = {"claraseg": [], "monai": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_ours(4, Path(tmp) / "warm_ours.jsonl")  # imports, allocator warm-up
        run_monai(4, Path(tmp) / "warm_monai.jsonl")
        for r in range(repeats):
            runs["claraseg"].append(run_ours(iterations, Path(tmp) / f"ours{r}.jsonl"))
            runs["monai"].append(run_monai(iterations, Path(tmp) / f"monai{r}.jsonl"))
    med = {k: statistics.median(v) for k, v in runs.items()}
    import ignite
    import monai

    return {"machine": machine(), "threads": threads, "iterations": iterations, "repeats": repeats,
            "task": f"3D U-Net 8-16-32, {CROP}^3 crops of a phantom, batch {BATCH}, {ITEMS} items, random flip, "
                    "Adam, DiceCE, one JSON-line iteration event per step",
            "versions": {"monai": monai.__version__, "ignite": ignite.__version__},
            "its_per_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
            "median_its_per_s": {k: round(v, 2) for k, v in med.items()},
            "ratio_claraseg_over_monai": round(med["claraseg"] / med["monai"], 3)}
