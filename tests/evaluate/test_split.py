"""The scan-level split (scan_split.json) and ``claraseg eval``'s acceptance of a label map stored under
another axis order or flip of the same voxels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from claraseg.errors import ClarasegError, GeometryMismatchError
from claraseg.evaluate.runner import align_label, structures_of
from claraseg.evaluate.split import SPLITS, hippocampus_split, load_split, split_scans
from claraseg.io import Image


def test_every_folder_is_in_one_split_and_patients_stay_together(tmp_path):
    spec = load_split()
    folders = [f for s in SPLITS for f in spec["splits"][s]["folders"]]
    assert len(folders) == len(set(folders))
    where = {f: s for s in SPLITS for f in spec["splits"][s]["folders"]}
    assert where["ct_cta_1p5mm"] == where["ct_chest_1p5mm"] and where["mr_spine_t1"] == where["mr_spine_t2"]
    assert not set(spec["splits"]["validation"]["mr_hippocampus"]) & set(spec["splits"]["test"]["mr_hippocampus"])
    bad = json.loads(json.dumps(spec))
    bad["splits"]["train"]["folders"].append("ct_chest_1p5mm")
    bad["splits"]["test"]["folders"].remove("ct_chest_1p5mm")
    path = tmp_path / "split.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ClarasegError, match="more than one split"):
        load_split(path)


def test_split_scans_of_the_shared_data(data_dir):
    test = split_scans(data_dir, "test")
    train_cases = hippocampus_split(data_dir, "train")
    held = {s.name for s in test if s.source == "mr_hippocampus"}
    held |= set(hippocampus_split(data_dir, "validation"))
    assert held and not held & set(train_cases) and len(train_cases) + len(held) == 260
    assert {s.source for s in test} >= {"ct_cta_1p5mm", "ct_chest_1p5mm"}
    with pytest.raises(ClarasegError, match="unknown split"):
        split_scans(data_dir, "everything")


def _pair():
    rng = np.random.default_rng(0)
    img = Image(rng.normal(size=(5, 6, 7)).astype(np.float32), origin=[10.0, -4.0, 2.0], spacing=[0.8, 1.0, 2.5],
                direction=np.eye(3))
    lab = np.zeros((5, 6, 7), np.uint8)
    lab[1:4, 2:5, 1:3] = 1
    lab[0, 0, 6] = 2
    return img, lab


def test_a_label_map_with_permuted_and_flipped_axes_is_reindexed_losslessly():
    img, lab = _pair()
    # The same voxels stored with axes (i, j, k) -> (k, i, -j): label index = (k, i, nj-1-j).
    lab_ijk = np.transpose(lab, (2, 1, 0))  # [i, j, k]
    other_ijk = np.flip(np.transpose(lab_ijk, (2, 0, 1)), axis=2)  # [k, i, j'] in the label's own order
    m = img.ijk_to_lps
    d = np.zeros((3, 3))
    d[:, 0], d[:, 1], d[:, 2] = m[:3, 2] / 2.5, m[:3, 0] / 0.8, -m[:3, 1] / 1.0
    origin = img.origin + m[:3, 1] * (6 - 1)
    label = Image(np.ascontiguousarray(np.transpose(other_ijk, (2, 1, 0))), origin=origin, spacing=[2.5, 0.8, 1.0],
                  direction=d, metadata={"is_label": True})
    assert not img.same_grid(label)
    aligned = align_label(img, label)
    assert aligned.same_grid(img) and np.array_equal(aligned.array, lab)
    found = structures_of("case", img, label, min_voxels=1)
    assert [s.label for s in found] == [1, 2] and np.array_equal(found[0].truth, lab == 1)


def test_a_label_map_on_other_voxels_is_still_refused():
    img, lab = _pair()
    shifted = Image(lab, origin=img.origin + np.array([0.4, 0.0, 0.0]), spacing=img.spacing, direction=img.direction)
    with pytest.raises(GeometryMismatchError, match="origin"):
        structures_of("case", img, shifted, min_voxels=1)
    cropped = Image(lab[:, :, :6], origin=img.origin, spacing=img.spacing, direction=img.direction)
    with pytest.raises(GeometryMismatchError, match="size"):
        align_label(img, cropped)


def test_cli_eval_split_reports_per_source_and_the_baseline(data_dir, tmp_path, capsys):
    from claraseg.cli import main
    from claraseg.models.testing import make_tiny_bundle

    models = tmp_path / "models"
    make_tiny_bundle("deepgrow2d", models / "deepgrow2d")
    out = tmp_path / "out"
    code = main(["eval", "--split", "validation", "--model", "deepgrow2d", "--models-dir", str(models),
                 "--sources", "mr_spine_t1", "--clicks", "2", "--data", str(data_dir), "--out", str(out),
                 "--tag", "tiny", "--quiet"])
    assert code == 0
    report = json.loads((out / "split_validation_deepgrow2d_tiny.json").read_text())
    assert [s["case"] for s in report["per_structure"]] == ["mr_spine_t1"]
    assert set(report["summary_by_source"]) == {"ours", "baseline"}
    assert "mr_spine_t1" in report["summary_by_source"]["baseline"]
    assert (out / "split_validation_baseline_deepgrow2d_random_walker.json").is_file()
    summary = json.loads((out / "split_validation_summary.json").read_text())
    assert list(summary) == ["deepgrow2d_tiny"]
    assert "mr_spine_t1: 1 structures" in capsys.readouterr().out
    assert main(["eval", "--split", "test", "--heldout"]) != 0
    assert "--split and --heldout" in capsys.readouterr().err
