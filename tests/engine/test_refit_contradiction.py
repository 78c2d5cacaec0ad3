"""What the DeepGrow 3D shape re-fit does when its result contradicts a click (``shape_refit_contradiction``):
refuse it (the click's own result stands), honour the clicks on it, or merge (the click model's answer
in the changed region that holds the contradicted click, the re-fit's elsewhere). A stand-in network
whose answer is the image (its bright voxels) makes the re-fit's result known; the ROI is laid on the
image grid (1 mm) so no resampling blurs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from claraseg.engine.masks import BoxMask
from claraseg.engine.runners import Volume, keep_clicked_changes, refit_with_dextr

SIZE = (40, 40, 40)  # i, j, k
# The block is voxels 8..31; with a 4 mm margin and a 32-voxel ROI the ROI spacing is exactly 1 mm.
SETTINGS = {"roi_size": [32, 32, 32], "margin_mm": 4.0, "threshold": 0.5, "guidance": {"sigma_vox": 1.5},
            "channels": ["image", "extreme_points", "foreground", "background", "mask"], "tta_flips": 1}
P = (slice(8, 14),) * 3     # a notch the click model left out, far from any click: the re-fit fills it
Q = (slice(26, 32),) * 3    # a notch holding a background click: the re-fit fills it too (a contradiction)
BG = np.array([[29, 29, 29]])


class _Image(torch.nn.Module):
    """Answers with the image channel: the re-fit draws the bright block whatever the clicks say."""

    def forward(self, x):
        return 20.0 * (x[:, :1] - 0.5)


def _case():
    block = np.zeros(SIZE[::-1], np.uint8)
    block[8:32, 8:32, 8:32] = 1
    mask = block.copy()
    mask[P] = 0
    mask[Q] = 0
    vol = Volume(block.astype(np.float32) * 100.0, np.ones(3), lambda t: t / 100.0)
    return block, BoxMask(SIZE, np.zeros(3, np.int64), mask), vol


def _run(mode: str):
    block, mask, vol = _case()
    out = refit_with_dextr(_Image(), SETTINGS, vol, mask, np.zeros((0, 3)), BG, "cpu", 0.0, mode)
    return block, mask, None if out is None else BoxMask(SIZE, *out).region(np.zeros(3), SIZE)


def test_refuse_gives_no_refit():
    assert _run("refuse")[2] is None


def test_honour_keeps_the_whole_refit():
    block, _, out = _run("honour")
    # The clicks are honoured afterwards by the session (radius); the re-fit itself is the block.
    np.testing.assert_array_equal(out, block)


def test_merge_keeps_the_refit_except_where_it_contradicts_a_click():
    block, mask, out = _run("merge")
    assert out[P].all()                 # the re-fit's filling of the other notch stays
    assert not out[Q].any()             # the contradicted region takes the click model's answer
    expected = block.copy()
    expected[Q] = 0
    np.testing.assert_array_equal(out, expected)


def test_keep_clicked_changes_takes_only_the_regions_holding_a_click():
    _, mask, _ = _case()
    full = np.zeros(SIZE[::-1], np.uint8)
    full[8:32, 8:32, 8:32] = 1
    new = BoxMask(SIZE, np.zeros(3, np.int64), full)
    out = keep_clicked_changes(mask, new, np.array([[10, 10, 10]])).region(np.zeros(3), SIZE)
    assert out[P].all() and not out[Q].any()
    # No click in any changed region: the old mask stands; no clicks at all: the new one.
    far = keep_clicked_changes(mask, new, np.array([[20, 20, 20]])).region(np.zeros(3), SIZE)
    np.testing.assert_array_equal(far, mask.region(np.zeros(3), SIZE))
    np.testing.assert_array_equal(keep_clicked_changes(mask, new, np.zeros((0, 3))).region(np.zeros(3), SIZE), full)


@pytest.mark.parametrize("value", ["ignore", 1, None])
def test_bundle_refuses_an_unknown_refit_contradiction(tmp_path, value):
    from claraseg.errors import ConfigError
    from claraseg.models.bundle import read_bundle
    from claraseg.models.testing import make_tiny_bundle

    with pytest.raises(ConfigError, match="shape_refit_contradiction"):
        read_bundle(make_tiny_bundle("deepgrow3d", tmp_path / "b", settings={"shape_refit_contradiction": value}))


def test_a_click_takes_back_only_the_same_sign_change_that_holds_it():
    """The re-fit (``old``) added a lobe and, touching it, removed a strip of the click's result
    (``new``); a background click in the lobe takes the lobe back, and the removed strip, though it
    touches the lobe, stays the re-fit's (the whole touching difference was taken back before)."""
    new_mask = np.zeros(SIZE[::-1], np.uint8)
    new_mask[8:32, 8:32, 8:32] = 1
    refit = new_mask.copy()
    refit[8:32, 8:32, 32:38] = 1     # an added lobe beyond i = 31
    refit[8:32, 8:32, 28:32] = 0     # a removed strip right next to it
    old, new = BoxMask(SIZE, np.zeros(3, np.int64), refit), BoxMask(SIZE, np.zeros(3, np.int64), new_mask)
    out = keep_clicked_changes(old, new, np.array([[35, 20, 20]])).region(np.zeros(3), SIZE)
    assert not out[8:32, 8:32, 32:38].any()      # the lobe holding the click: the click's answer
    assert not out[8:32, 8:32, 28:32].any()      # the strip: still the re-fit's
    # A foreground click in the strip takes the strip back (the click's answer), and only it.
    out = keep_clicked_changes(old, new, np.array([[30, 20, 20]])).region(np.zeros(3), SIZE)
    assert out[8:32, 8:32, 28:32].all() and out[8:32, 8:32, 32:38].all()
