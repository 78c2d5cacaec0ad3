"""AutoML fixtures: a phantom datalist and copies of the tiny bundle with a chosen search space."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from claraseg.automl.bundle import read_config
from claraseg.automl.searchspace import strip_search

TINY = Path(__file__).resolve().parents[2] / "claraseg" / "automl" / "bundles" / "tiny_seg"


@pytest.fixture(scope="session")
def phantom_datalist(tmp_path_factory) -> Path:
    """Two small phantom training cases and one validation case, binary liver labels."""
    from claraseg.automl.data import write_phantom_datalist

    return write_phantom_datalist(tmp_path_factory.mktemp("phantoms"), n_train=2, n_val=1, size_ijk=(32, 32, 24))


@pytest.fixture
def make_bundle(tmp_path):
    """``make_bundle(root_search=None, lr=..., iterations=..., edit=callable)``: a tiny bundle copy whose
    only search elements are those given (the shipped ones are removed unless ``keep=True``)."""

    def make(root_search=None, optimizer_search=None, lr=0.01, iterations=20, val_interval=10, keep=False,
             edit=None, name="bundle") -> Path:
        dest = tmp_path / name
        shutil.copytree(TINY, dest)
        config = read_config(TINY) if keep else strip_search(read_config(TINY))
        config = copy.deepcopy(config)
        config["optimizer"]["lr"] = lr
        config["training"].update(max_iterations=iterations, val_interval=val_interval)
        if root_search is not None:
            config["search"] = root_search
        if optimizer_search is not None:
            config["optimizer"]["search"] = optimizer_search
        if edit is not None:
            edit(config)
        (dest / "configs" / "train.json").write_text(json.dumps(config, indent=1))
        return dest

    return make

