"""Datasets and the seeded, resumable batch order of a job.

The order of items is a function of ``(seed, epoch)`` only, and every item's random transforms are
seeded by ``(seed, epoch, position)``, so a job resumed from a checkpoint's data cursor sees exactly the
batches the interrupted run would have seen, whichever dataset type caches the deterministic part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def make_dataset(kind: str, data: Sequence[dict], transform: Callable, settings: dict[str, Any],
                 cache_dir: str | Path | None = None, start_epoch: int = 0):
    """A MONAI dataset over ``data`` of the job's ``training#dataset`` kind.

    ``plain``: ``Dataset`` (every transform on every access); ``cache``: ``CacheDataset`` (deterministic
    transforms once, in memory); ``persistent``: ``PersistentDataset`` (cached on disk in ``cache_dir``);
    ``smart``: ``SmartCacheDataset`` (a window of ``cache_rate`` of the items, ``replace_rate`` of it
    replaced each epoch in a background thread). Cached items are handed to the random transforms
    without a copy unless ``copy_cache`` (MONAI's transforms return new data rather than modify it).
    For ``smart``, ``start_epoch`` rotates the data so the window is where it was after that many epochs
    (the cache is a FIFO over the data in order).
    """
    from monai.data import CacheDataset, Dataset, PersistentDataset, SmartCacheDataset

    data = list(data)
    if kind == "plain":
        return Dataset(data, transform)
    if kind == "cache":
        return CacheDataset(data, transform, cache_rate=settings["cache_rate"], num_workers=1, progress=False,
                            copy_cache=settings["copy_cache"])
    if kind == "persistent":
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transform, cache_dir=str(cache_dir))
    if kind == "smart":
        cache_num = max(1, min(len(data), int(round(settings["cache_rate"] * len(data)))))
        replace_num = min(int(np.ceil(cache_num * settings["replace_rate"])), len(data) - cache_num)
        shift = (start_epoch * replace_num) % len(data) if replace_num else 0
        data = data[shift:] + data[:shift]
        return SmartCacheDataset(data, transform, replace_rate=settings["replace_rate"], cache_num=cache_num,
                                 num_init_workers=1, num_replace_workers=1, progress=False, shuffle=False,
                                 copy_cache=settings["copy_cache"])
    raise ValueError(f"unknown dataset kind {kind!r}")


class SeededItems:
    """Wraps a MONAI dataset: ``items[(index, seed)]`` re-seeds the random transforms, then fetches ``index``."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=int(seed))
        return self.dataset[int(index)]


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> list[list[tuple[int, int]]]:
    """The batches of ``(index, item seed)`` one rank sees in one epoch (last short batch kept).

    A seeded permutation per epoch, padded to a multiple of ``world_size`` and dealt round-robin across
    ranks, so distributed ranks see disjoint items and the same number of batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_items).tolist()
    if world_size > 1 and len(order) % world_size:
        order += order[: world_size - len(order) % world_size]
    seeds = rng.integers(0, 2**31 - 1, size=len(order)).tolist()
    mine = list(zip(order, seeds))[rank::world_size]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
