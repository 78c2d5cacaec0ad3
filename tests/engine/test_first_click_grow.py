"""The first click on an object larger than its ROI: ``first_click_grow`` "wider" re-runs the click at
1.8x the spacing, "from_result" re-runs it with the cut result as the current mask in an ROI sized from
it; both find an object the first ROI cut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from claraseg.engine.masks import BoxMask
from claraseg.engine.runners import Volume, run_deepgrow
from claraseg.errors import ConfigError
from claraseg.models.bundle import read_bundle
from claraseg.models.testing import make_tiny_bundle

SIZE = (60, 60, 60)  # i, j, k, 1 mm voxels


class _Threshold(torch.nn.Module):
    """A 'network' that segments the bright image voxels its ROI sees and records the mask channels."""

    def __init__(self):
        super().__init__()
        self.masks: list[float] = []

    def forward(self, x):
        self.masks.append(float(x[:, 3].sum()))
        return 20.0 * (x[:, :1] - 0.5)


@pytest.mark.parametrize("grow", ["wider", "from_result"])
def test_a_first_click_cut_by_its_roi_grows_to_the_whole_object(grow):
    obj = np.zeros(SIZE[::-1], np.uint8)
    obj[8:52, 8:52, 8:52] = 1  # 44 mm across; the first ROI (16 voxels of 1 mm) sees 16 mm of it
    vol = Volume(obj.astype(np.float32), np.ones(3), lambda t: t)
    settings = {"roi_size": [16, 16, 16], "fill": 0.7, "correction_fill": 0.7, "spacing_range_mm": [0.5, 8.0],
                "threshold": 0.5, "first_click_spacing_mm": 1.0, "guidance": {"encoding": "gaussian", "sigma_mm": 2.0},
                "first_click_grow": grow, "first_click_grow_passes": 3}
    net = _Threshold()
    fg = np.array([[30, 30, 30]])
    start, crop = run_deepgrow(net, "deepgrow3d", settings, vol, BoxMask(SIZE), fg, np.zeros((0, 3)), "cpu")
    out = BoxMask(SIZE, start, crop).region(np.zeros(3), SIZE)
    assert len(net.masks) >= 2
    dice = 2 * (out & obj).sum() / (out.sum() + obj.sum())
    assert dice > 0.9
    # "from_result" hands the cut result to the next pass as the current mask; "wider" starts afresh.
    assert (net.masks[1] > 0) == (grow == "from_result")
    # Without grow passes the result stays cut by the first ROI.
    start, crop = run_deepgrow(_Threshold(), "deepgrow3d", {**settings, "first_click_grow_passes": 0}, vol,
                               BoxMask(SIZE), fg, np.zeros((0, 3)), "cpu")
    assert crop.sum() < 0.1 * obj.sum()


def test_an_unknown_first_click_grow_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="first_click_grow"):
        read_bundle(make_tiny_bundle("deepgrow3d", tmp_path / "b", settings={"first_click_grow": "more"}))
