"""Held-out evaluation: structures from a bundle's held-out record, reports and the baseline cache."""

from __future__ import annotations

import json

import pytest

from claraseg.backend import ModelDescriptor
from claraseg.errors import ClarasegError
from claraseg.evaluate.heldout import evaluate_heldout, heldout_baseline, heldout_record, heldout_structures


def test_heldout_structures_follow_the_record(data_dir):
    hippocampus = sorted(p.name for p in (data_dir / "mr_hippocampus" / "images").glob("*.nii.gz"))[-1]
    record = {"ct_abdomen_3mm": ["spleen", "pancreas"], "mr_hippocampus": [hippocampus], "phantom_seeds": [5000]}
    structures = heldout_structures(record, data_dir, min_voxels=1000)
    cases = {(s.case, s.name) for s in structures}
    assert ("ct_abdomen_3mm", "spleen") in cases
    assert ("ct_abdomen_3mm", "pancreas") not in cases  # 695 voxels: below the 1,000-voxel floor
    assert all(s.truth.sum() >= 1000 for s in structures)
    assert any(c.startswith("phantom_5000") for c, _ in cases)
    hippo = [s for s in structures if s.case.startswith("mr_hippocampus/")]
    assert len(hippo) <= 1 and all(s.name == "hippocampus" for s in hippo)
    with pytest.raises(ClarasegError, match="not in labels.json"):
        heldout_structures({"ct_abdomen_3mm": ["no_such_organ"]}, data_dir)


def test_a_model_without_a_record_is_refused():
    with pytest.raises(ClarasegError, match="held-out"):
        heldout_record(ModelDescriptor("m", "deepgrow3d"))


def test_evaluate_heldout_writes_reports_and_reuses_the_baseline(tmp_path):
    testing = pytest.importorskip("claraseg.models.testing", reason="claraseg.models.testing (engine part) missing")
    engine = pytest.importorskip("claraseg.engine", reason="claraseg.engine (LocalBackend) missing")
    record = {"phantom_seeds": [5000]}
    testing.make_tiny_bundle("deepgrow3d", tmp_path / "models" / "deepgrow3d",
                             settings={"training": {"heldout": record}})
    backend = engine.LocalBackend(tmp_path / "models", device="cpu", idle_timeout=None)
    out = tmp_path / "results"
    try:
        summaries = evaluate_heldout(backend, ["deepgrow3d"], tmp_path, out, interactions=2, min_voxels=3000,
                                     progress=False)
    finally:
        backend.close()
    report = json.loads((out / "heldout_deepgrow3d.json").read_text())
    assert (out / "heldout_deepgrow3d.png").stat().st_size > 1000
    assert report["inputs"]["heldout"] == record and report["baseline"]["method"] == "random_walker"
    assert set(report["summary_by_source"]["ours"]) == {"phantoms"}
    assert json.loads((out / "heldout_summary.json").read_text())["deepgrow3d"]["summary"] == summaries["deepgrow3d"]["summary"]
    # The saved baseline is reused for the same structures: mark it and read it back.
    cache = out / "baseline_deepgrow3d_random_walker.json"
    saved = json.loads(cache.read_text())
    saved["baseline"]["marker"] = True
    cache.write_text(json.dumps(saved))
    structures = heldout_structures(record, tmp_path, min_voxels=3000)
    assert heldout_baseline("random_walker", "deepgrow3d", structures, 2, out, progress=False)["marker"]
