"""The shipped bundles pass MONAI's ``verify_metadata`` (against the bundle specification's mandatory keys,
claraseg/models/metadata_schema.json, offline), and their training history lives beside the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claraseg.models.bundle import (
    HISTORY,
    METADATA,
    read_bundle,
    read_training_history,
    write_training_history,
)

BUNDLES = Path(__file__).resolve().parents[2] / "claraseg" / "models" / "bundles"
SCHEMA = Path(__file__).resolve().parents[2] / "claraseg" / "models" / "metadata_schema.json"
KINDS = ("deepgrow3d", "deepgrow2d", "dextr3d", "segmentation")


@pytest.mark.parametrize("name", KINDS)
def test_shipped_bundle_passes_monai_verify_metadata(name):
    from monai.bundle import verify_metadata

    # What `python -m monai.bundle verify_metadata --meta_file M --filepath SCHEMA` runs; it raises on a
    # metadata file that does not follow the schema.
    verify_metadata(meta_file=str(BUNDLES / name / METADATA), filepath=str(SCHEMA))


def test_verify_metadata_refuses_a_bundle_without_a_mandatory_key(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.loads((BUNDLES / "deepgrow3d" / METADATA).read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", KINDS)
def test_training_history_is_beside_the_metadata_not_in_it(name):
    meta = json.loads((BUNDLES / name / METADATA).read_text())
    assert "training" not in meta["claraseg"]
    history = read_training_history(BUNDLES / name)
    assert history["recipe"].startswith("claraseg pretrain") and history["iterations"] > 0
    descriptor = read_bundle(BUNDLES / name).descriptor()
    assert "training" not in descriptor.extra
    if name != "segmentation":  # evaluation finds the held-out structures in what every client reads
        assert descriptor.extra["heldout"] == history["heldout"] == meta["claraseg"]["heldout"]


def test_write_history_moves_a_legacy_record_out_of_the_metadata(tmp_path):
    import shutil

    bundle = tmp_path / "dextr3d"
    shutil.copytree(BUNDLES / "dextr3d", bundle)
    (bundle / HISTORY).unlink()
    meta = json.loads((bundle / METADATA).read_text())
    meta["claraseg"].pop("heldout")
    meta["claraseg"]["training"] = {"recipe": "claraseg pretrain --models dextr3d", "heldout": {"x": ["y"]}}
    (bundle / METADATA).write_text(json.dumps(meta))
    assert read_training_history(bundle)["recipe"] == "claraseg pretrain --models dextr3d"  # legacy still read
    assert read_bundle(bundle).descriptor().extra["heldout"] == {"x": ["y"]}
    write_training_history(bundle, {"recipe": "claraseg pretrain --models dextr3d --continue", "heldout": {"x": ["z"]}})
    meta = json.loads((bundle / METADATA).read_text())
    assert "training" not in meta["claraseg"] and meta["claraseg"]["heldout"] == {"x": ["z"]}
    assert read_training_history(bundle)["recipe"].endswith("--continue")
