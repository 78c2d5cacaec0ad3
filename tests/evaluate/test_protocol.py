"""The click protocol on cases whose answer is known: oracle and empty predictors, ties, extreme points,
NoC/AUC arithmetic, 2D slices and DEXTR3D's first prompt."""

from __future__ import annotations

import numpy as np
import pytest

from claraseg.backend import Backend, ModelDescriptor, Session
from claraseg.errors import InvalidPointsError
from claraseg.evaluate import (
    dice,
    dice_auc,
    extreme_points,
    largest_cross_section,
    next_click,
    number_of_clicks,
)
from claraseg.evaluate.protocol import NOC_CAP, run_structure
from claraseg.io import Image, MaskDelta


class _Predictor:
    """A test predictor behind the Backend/Session interface: ``oracle`` answers every prompt with the
    labelled structure under the prompt's first point; otherwise it answers with an empty mask."""

    def __init__(self, label: np.ndarray, oracle: bool):
        self.label, self.oracle = label, oracle
        self.calls: list[tuple[str, dict]] = []
        self.id, self.image_size = "test", tuple(label.shape[::-1])

    def _answer(self, point) -> MaskDelta:
        if not self.oracle:
            return MaskDelta.empty(self.image_size)
        i, j, k = point
        return MaskDelta.from_full((self.label == self.label[k, j, i]).astype(np.uint8))

    def click(self, model, foreground=(), background=(), object_id="1", slice_axis=None):
        self.calls.append(("click", {"fg": list(foreground), "bg": list(background), "slice_axis": slice_axis}))
        return self._answer((list(foreground) + list(background))[0])

    def extreme_points(self, model, points, object_id="1"):
        self.calls.append(("extreme_points", {"points": list(points)}))
        return self._answer(points[0])

    def auto_segment(self, model):
        raise AssertionError("the click protocol must not call auto_segment")

    def set_mask(self, object_id, mask):
        raise AssertionError("the click protocol must not call set_mask")

    def undo(self, object_id="1"):
        return MaskDelta.empty(self.image_size)

    def clear(self, object_id="1"):
        return MaskDelta.empty(self.image_size)

    def close(self):
        pass


class _PredictorBackend:
    def __init__(self, label: np.ndarray, oracle: bool):
        self.session = _Predictor(label, oracle)

    def models(self):
        return [ModelDescriptor("p3d", "deepgrow3d"), ModelDescriptor("p2d", "deepgrow2d"),
                ModelDescriptor("px", "dextr3d", min_points=6)]

    def open_session(self, image: Image):
        return self.session

    def close(self):
        pass


def _box_label(shape=(20, 24, 28), lo=(4, 5, 6), size=(9, 11, 13)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = 1
    return lab


def test_predictors_implement_the_interface():
    backend = _PredictorBackend(_box_label(), oracle=True)
    assert isinstance(backend, Backend)
    assert isinstance(backend.session, Session)


def test_perfect_predictor_is_exact_at_the_first_interaction():
    lab = _box_label()
    session = _PredictorBackend(lab, oracle=True).session
    r = run_structure(session, "p3d", "deepgrow3d", lab == 1, interactions=20)
    assert r.dice == [1.0] * 20
    assert r.noc == {"80": 1, "85": 1, "90": 1}
    assert r.exact_at == 1 and r.auc == pytest.approx(4.0)
    assert len(session.calls) == 1  # nothing left to click on after an exact answer


def test_empty_predictor_first_click_is_the_deepest_interior_point():
    lab = _box_label(size=(9, 9, 9))  # a 9^3 cube at (k, j, i) = (4, 5, 6): its one deepest voxel is (8, 9, 10)
    session = _PredictorBackend(lab, oracle=False).session
    r = run_structure(session, "p3d", "deepgrow3d", lab == 1, interactions=3)
    kind, first = session.calls[0]
    assert kind == "click" and first["fg"] == [[10, 9, 8]] and first["bg"] == []
    assert r.dice == [0.0, 0.0, 0.0]
    assert r.noc == {"80": NOC_CAP, "85": NOC_CAP, "90": NOC_CAP}
    assert [s.kind for s in r.interactions] == ["foreground"] * 3


def test_ties_are_broken_reproducibly_by_the_seeded_rng():
    lab = _box_label(size=(6, 6, 6))  # even sides: 8 voxels share the maximal distance
    truth = lab == 1
    clicks = {next_click(np.zeros_like(truth), truth, np.random.default_rng(42))[0] for _ in range(5)}
    assert len(clicks) == 1
    k, j, i = clicks.pop()
    assert k in (6, 7) and j in (7, 8) and i in (8, 9)  # one of the 8 central voxels of the box
    others = {next_click(np.zeros_like(truth), truth, np.random.default_rng(s))[0] for s in range(30)}
    assert len(others) > 1  # the choice does depend on the RNG, so the seed matters
    assert all(o[0] in (6, 7) and o[1] in (7, 8) and o[2] in (8, 9) for o in others)


def test_next_click_targets_the_largest_error_component():
    truth = np.zeros((30, 30, 30), bool)
    truth[2:8, 2:8, 2:8] = True  # small miss (216 voxels)
    pred = np.zeros_like(truth)
    pred[10:25, 10:25, 10:25] = True  # large false positive (3,375 voxels): background click at its centre
    (k, j, i), fg = next_click(pred, truth, np.random.default_rng(42))
    assert not fg and (k, j, i) == (17, 17, 17)
    pred[:] = False
    (k, j, i), fg = next_click(pred, truth, np.random.default_rng(42))
    assert fg and all(4 <= v <= 5 for v in (k, j, i))
    assert next_click(truth, truth, np.random.default_rng(42)) is None


def test_extreme_points_pick_the_voxel_nearest_the_centroid_among_ties():
    lab = _box_label(shape=(20, 20, 20), lo=(5, 5, 5), size=(9, 9, 9))
    pts = extreme_points(lab == 1)
    # min/max along i, j, k of a 9^3 box at 5..13: the face centres.
    assert pts == [[5, 9, 9], [13, 9, 9], [9, 5, 9], [9, 13, 9], [9, 9, 5], [9, 9, 13]]
    offsets = []
    for seed in range(20):
        jit = np.asarray(extreme_points(lab == 1, jitter=3, rng=np.random.default_rng(seed)))
        offsets.append(jit - np.asarray(pts))
    offsets = np.concatenate(offsets)
    assert offsets.min() == -3 and offsets.max() == 3  # symmetric, unlike MONAI's one-sided jitter
    with pytest.raises(InvalidPointsError):
        extreme_points(np.zeros((4, 4, 4), bool))


def test_noc_and_auc_arithmetic():
    curve = [0.5, 0.82, 0.86, 0.91, 0.95]
    assert number_of_clicks(curve, 0.80) == 2
    assert number_of_clicks(curve, 0.85) == 3
    assert number_of_clicks(curve, 0.90) == 4
    assert number_of_clicks([0.1] * 5, 0.85) == NOC_CAP
    assert number_of_clicks([0.1] * 25 + [0.9], 0.85) == NOC_CAP  # beyond the cap counts as the cap
    assert dice_auc([1.0] * 5) == pytest.approx(4.0)
    assert dice_auc([0.0, 0.5, 1.0, 1.0, 1.0]) == pytest.approx(0.25 + 0.75 + 1.0 + 1.0)
    assert dice_auc([0.2, 0.0, 0.5, 1.0, 1.0, 1.0], first=2) == pytest.approx(3.0)  # DEXTR3D: 2..6
    assert dice_auc([1.0] * 4) is None
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    assert dice(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)


def test_dextr3d_starts_with_the_six_extreme_points():
    lab = _box_label()
    session = _PredictorBackend(lab, oracle=True).session
    r = run_structure(session, "px", "dextr3d", lab == 1, interactions=6, refine_model="p3d")
    kind, args = session.calls[0]
    assert kind == "extreme_points" and args["points"] == extreme_points(lab == 1)
    assert r.interactions[0].kind == "extreme_points" and r.dice[0] == 1.0 and r.noc["85"] == 1


def test_deepgrow2d_is_evaluated_on_the_largest_cross_section():
    lab = np.zeros((12, 20, 20), np.uint8)
    lab[3:9, 5:15, 5:15] = 1
    lab[6, 2:18, 2:18] = 1  # slice k = 6 is the largest along k
    assert largest_cross_section(lab == 1, 2) == 6
    session = _PredictorBackend(lab, oracle=False).session
    r = run_structure(session, "p2d", "deepgrow2d", lab == 1, interactions=3, slice_axis=2)
    assert r.slice == {"axis": 2, "index": 6}
    assert all(c[1]["slice_axis"] == 2 and c[1]["fg"][0][2] == 6 for c in session.calls)
    # Along j the protocol picks a j-slice and names axis 1.
    session = _PredictorBackend(lab, oracle=False).session
    r = run_structure(session, "p2d", "deepgrow2d", lab == 1, interactions=1, slice_axis=1)
    j = r.slice["index"]
    assert r.slice["axis"] == 1 and session.calls[0][1]["fg"][0][1] == j and lab[:, j, :].any()
