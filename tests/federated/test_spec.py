"""A federated job's spec is plain data: config syntax, bad names and out-of-range values are refused."""

from __future__ import annotations

import json

import pytest

from claraseg.errors import ConfigError
from claraseg.federated.spec import FederatedSpec, check_plain

GOOD = {"bundle": "models/deepgrow3d", "sites": {"site-a": "a.json", "site-b": "b.json"}, "rounds": 2,
        "local_iterations": 3, "overrides": {"optimizer#lr": 1e-4, "replay": 0}}


def test_plain_spec_round_trips(tmp_path):
    spec = FederatedSpec.from_dict(GOOD)
    assert spec.publisher == "site-a"
    spec.save(tmp_path / "spec.json")
    assert FederatedSpec.load(tmp_path / "spec.json") == spec


@pytest.mark.parametrize("overrides, needle", [
    ({"optimizer#lr": "$1e-3"}, "expression"),
    ({"network_def": {"_target_": "os.system", "command": "id"}}, "_target_"),
    ({"optimizer#params": "@network_def"}, "reference"),
    ({"optimizer#lr": "%configs/x.json#lr"}, "reference"),
    ({"loss": {"_requires_": "x"}}, "_requires_"),
    ({"optimizer#lr": float("nan")}, "finite"),
    ({"import os": 1}, "config id"),
    ({"training#max_iterations": 10}, "set by the federation"),
])
def test_config_syntax_and_reserved_overrides_are_refused(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        FederatedSpec.from_dict({**GOOD, "overrides": overrides})


@pytest.mark.parametrize("change, needle", [
    ({"sites": {}}, "at least one site"),
    ({"sites": {"../etc": "a.json"}}, "site name"),
    ({"sites": {"server": "a.json"}}, "site name"),
    ({"rounds": 0}, "rounds"),
    ({"rounds": True}, "rounds"),
    ({"local_iterations": 10**9}, "local_iterations"),
    ({"publish_site": "site-z"}, "publish_site"),
    ({"min_sites": 3}, "min_sites"),
    ({"device": "tpu"}, "device"),
    ({"name": "../x"}, "invalid model name"),
    ({"he": "yes"}, "he"),
    ({"unexpected": 1}, "unknown field"),
    ({"bundle": "$import os"}, "expression"),
])
def test_bad_specs_say_what_is_wrong(change, needle):
    with pytest.raises(ConfigError, match=needle):
        FederatedSpec.from_dict({**GOOD, **change})


def test_nesting_and_types():
    with pytest.raises(ConfigError, match="deeper"):
        check_plain(json.loads("[" * 20 + "]" * 20))
    with pytest.raises(ConfigError, match="not plain data"):
        check_plain({"a": object()})
    check_plain({"a": [1, 2.5, None, True, "text", {"b": "c"}]})


def test_unreadable_spec_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        FederatedSpec.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        FederatedSpec.load(tmp_path / "missing.json")


def test_create_job_checks_the_bundle_and_datalists(tmp_path, site_datalists):
    from claraseg.federated.job import create_job

    from .conftest import tiny_bundle

    with pytest.raises(ConfigError, match="not a model bundle"):
        create_job(FederatedSpec(bundle=str(tmp_path / "nothing"), sites=site_datalists), tmp_path / "j1")
    bundle = tiny_bundle(tmp_path / "models")
    with pytest.raises(ConfigError, match="does not exist"):
        create_job(FederatedSpec(bundle=str(bundle), sites={"site-a": str(tmp_path / "none.json")}), tmp_path / "j2")
    assert not (tmp_path / "j2" / "federated.json").exists()
