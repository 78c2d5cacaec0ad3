"""Bundles, the model registry, versions and publishing."""

from __future__ import annotations

import json
import shutil

import pytest

from claraseg.errors import ConfigError, ModelError, UnknownModelError
from claraseg.models.bundle import labels_from_metadata, read_bundle
from claraseg.models.registry import ModelRegistry, split_name
from claraseg.models.testing import make_tiny_bundle


def test_descriptors_carry_the_bundle_constants(tiny_models):
    reg = ModelRegistry(tiny_models)
    assert reg.names() == ["deepgrow2d", "deepgrow3d", "dextr3d", "segmentation"]
    d = {x.name: x for x in reg.descriptors()}
    assert d["dextr3d"].min_points == 6 and d["deepgrow3d"].min_points == 1
    assert d["deepgrow2d"].roi_size == [128, 128, 1]
    assert d["segmentation"].labels[1] == "liver" and d["segmentation"].spacing == [3.0, 3.0, 3.0]
    assert d["deepgrow3d"].extra["versions"] == ["deepgrow3d@v1"] and d["deepgrow3d"].extra["has_weights"]
    # Everything the engine uses lives in the bundle's metadata.
    s = reg.get("deepgrow3d").settings
    assert {"roi_size", "guidance", "intensity", "spacing_range_mm", "first_click_spacing_mm", "channels"} <= set(s)


def test_zoo_format_bundle_reads_as_segmentation(tiny_models, tmp_path):
    # A model-zoo bundle has no claraseg section: kind and labels come from network_data_format.
    src = tiny_models / "segmentation"
    dst = tmp_path / "zoo_bundle"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "configs" / "metadata.json").read_text())
    del meta["claraseg"]
    (dst / "configs" / "metadata.json").write_text(json.dumps(meta))
    b = read_bundle(dst)
    assert b.kind == "segmentation"
    assert b.descriptor().labels == {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "stomach"}
    assert labels_from_metadata({}) == {1: "object"}
    b.load_network()


def test_publish_versions_and_reload(tiny_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "deepgrow3d", models / "deepgrow3d")
    reg = ModelRegistry(models)
    assert reg.versions("deepgrow3d") == [1]
    new = make_tiny_bundle("deepgrow3d", tmp_path / "job" / "bundle", seed=5, version="0.2.0")
    assert reg.publish("deepgrow3d", new) == "deepgrow3d@v2"
    assert reg.versions("deepgrow3d") == [1, 2]
    assert reg.get("deepgrow3d").version == "0.2.0"  # plain name = newest
    assert reg.get("deepgrow3d@v1").version == "0.0.1"  # old versions stay selectable
    assert reg.descriptor("deepgrow3d").extra["versions"] == ["deepgrow3d@v1", "deepgrow3d@v2"]
    assert reg.network("deepgrow3d@v1") is not reg.network("deepgrow3d@v2")
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # no partial copies left behind
    # Another registry on the same folder sees the new version after reload().
    other = ModelRegistry(models)
    assert other.publish("deepgrow3d", new) == "deepgrow3d@v3"
    assert reg.versions("deepgrow3d") == [1, 2]
    reg.reload()
    assert reg.versions("deepgrow3d") == [1, 2, 3]


def test_publish_refuses_bundles_without_weights(tiny_models, tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    src = tmp_path / "noweights"
    shutil.copytree(tiny_models / "dextr3d", src)
    (src / "models" / "model.pt").unlink()
    with pytest.raises(ModelError, match="model.pt"):
        reg.publish("dextr3d", src)
    assert reg.names() == []


def test_unknown_models_and_bad_bundles(tiny_models, tmp_path):
    reg = ModelRegistry(tiny_models)
    with pytest.raises(UnknownModelError, match="available: deepgrow2d"):
        reg.get("nope")
    with pytest.raises(UnknownModelError, match="versions of deepgrow3d"):
        reg.get("deepgrow3d@v7")
    with pytest.raises(UnknownModelError):
        split_name("bad name!")
    # A broken bundle is reported, and does not hide the good ones.
    shutil.copytree(tiny_models, tmp_path / "m")
    (tmp_path / "m" / "dextr3d" / "configs" / "metadata.json").write_text("{not json")
    reg2 = ModelRegistry(tmp_path / "m")
    assert "dextr3d" in reg2.errors and "deepgrow3d" in reg2.names()
    # Weights that do not fit the network give a ModelError naming the file.
    shutil.copy(tiny_models / "dextr3d" / "models" / "model.pt", tmp_path / "m" / "deepgrow3d" / "models" / "model.pt")
    with pytest.raises(ModelError, match="do not fit"):
        ModelRegistry(tmp_path / "m").network("deepgrow3d")
    inf = tmp_path / "m" / "deepgrow2d" / "configs" / "inference.json"
    cfg = json.loads(inf.read_text())
    cfg["network_def"]["_target_"] = "NoSuchNet"
    inf.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError):
        ModelRegistry(tmp_path / "m").network("deepgrow2d")


@pytest.mark.parametrize("key, value", [("tta_flips", 0), ("tta_flips", "8"), ("tta_flips", 2.5),
                                        ("click_radius_mm", -1), ("click_radius_mm", "1 mm"),
                                        ("threshold", 1.5), ("threshold", "0.5"), ("fill", 0), ("correction_fill", 2),
                                        ("first_click_spacing_mm", -2), ("first_click_grow_passes", 1.5),
                                        ("shape_refit_passes", 0), ("shape_refit_passes", "2"), ("shape_refit_tta_flips", 0),
                                        ("spacing_range_mm", [4, 1]), ("spacing_range_mm", [1]),
                                        ("roi_size", [128, 128]), ("roi_size", [128, 0, 1]),
                                        ("threshold", float("nan")), ("min_points", True),
                                        ("boundary_refine", {"band": 0}), ("boundary_refine", {"bins": 1.5}),
                                        ("boundary_refine", {"sigma": 1}), ("boundary_refine", True)])
def test_bad_inference_settings_are_refused_at_load(tiny_models, tmp_path, key, value):
    """A bundle whose test-time flips or click radius is not a valid number is reported when it is read,
    naming the setting, instead of failing inside a click."""
    from claraseg.models.bundle import read_bundle

    shutil.copytree(tiny_models / "deepgrow2d", tmp_path / "deepgrow2d")
    meta_path = tmp_path / "deepgrow2d" / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["claraseg"][key] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=f"claraseg.{key} must be"):
        read_bundle(tmp_path / "deepgrow2d")
    assert "deepgrow2d" in ModelRegistry(tmp_path).errors


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("roi_size"), "lacks roi_size"),
    (lambda c: c.pop("guidance"), "lacks guidance"),
    (lambda c: c["guidance"].pop("sigma_mm"), "guidance of a deepgrow2d model lacks sigma_mm"),
    (lambda c: c["guidance"].update(sigma_mm=0), "claraseg.guidance.sigma_mm must be"),
    (lambda c: c.update(guidance="gaussian"), "claraseg.guidance must be an object"),
])
def test_incomplete_settings_are_refused_at_load(tiny_models, tmp_path, change, message):
    """A claraseg section without a constant the engine needs is reported when read, naming the key."""
    from claraseg.models.bundle import read_bundle

    shutil.copytree(tiny_models / "deepgrow2d", tmp_path / "deepgrow2d")
    meta_path = tmp_path / "deepgrow2d" / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    change(meta["claraseg"])
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=message):
        read_bundle(tmp_path / "deepgrow2d")


def test_settings_under_their_earlier_names_are_read_under_the_stage_names(tmp_path):
    import json

    from claraseg.errors import ConfigError
    from claraseg.models.bundle import read_bundle
    from claraseg.models.testing import make_tiny_bundle

    path = make_tiny_bundle("deepgrow3d", tmp_path / "dg")
    meta_path = path / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["claraseg"].update({"refit_passes": 2, "refine_fill": 0.5, "grow_passes": 1})
    for key in ("shape_refit_passes", "correction_fill", "first_click_grow_passes"):
        meta["claraseg"].pop(key, None)
    meta_path.write_text(json.dumps(meta))
    s = read_bundle(path).settings
    assert (s["shape_refit_passes"], s["correction_fill"], s["first_click_grow_passes"]) == (2, 0.5, 1)
    assert "refit_passes" not in s
    meta["claraseg"]["shape_refit_passes"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="both refit_passes"):
        read_bundle(path)
