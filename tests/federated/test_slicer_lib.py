"""The Clara Train panel's federated helpers (ClaraTrainModuleLib.federated), without Slicer: this scene's
segmentations as a site's datalist, a federated job's rounds and metrics read from its events."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "ClaraTrainModule") not in sys.path:
    sys.path.insert(0, str(ROOT / "ClaraTrainModule"))

from ClaraTrainModuleLib import federated  # noqa: E402
from ClaraTrainModuleLib.jobs import Case  # noqa: E402

from .conftest import ROUNDS, SITES  # noqa: E402


def test_site_datalist_from_exported_cases(site_datalists, tmp_path):
    entry = json.loads(Path(site_datalists["site-a"]).read_text())[0]
    folder = Path(site_datalists["site-a"]).parent
    case = Case(str(folder / entry["image"]), str(folder / entry["label"]), {1: "spleen", 5: "liver"}, "ct")
    path = federated.write_site_datalist([case], tmp_path, "hospital-1")
    written = json.loads(path.read_text())
    assert (path.parent / written[0]["label"]).resolve() == (folder / entry["label"]).resolve()
    site = json.loads((path.parent / "site.json").read_text())
    assert site["site"] == "hospital-1" and site["structures"] == ["liver", "spleen"]
    assert f"--site hospital-1={path.resolve()}" in site["command"]
    # The datalist is one a federated job takes for that site.
    from claraseg.federated.spec import FederatedSpec

    FederatedSpec(bundle="b", sites={site["site"]: site["datalist"]})
    for bad in ("../etc", "server", "", "1site"):
        with pytest.raises(ValueError, match="site name"):
            federated.write_site_datalist([case], tmp_path, bad)


def test_progress_of_a_finished_federation(federations):
    run = federations["he"]
    progress = federated.federated_progress(run["job"], "site-a")
    assert progress["state"] == "completed" and progress["round"] == ROUNDS == progress["num_rounds"]
    assert progress["he"] is True and progress["published"] == "deepgrow3d@v2"
    assert [r["round"] for r in progress["rows"]] == list(range(ROUNDS))
    assert [r["round"] for r in progress["site_rows"]] == list(range(ROUNDS))
    assert set(progress["final"]) == set(SITES)
    lines = federated.progress_lines(progress)
    assert lines[0] == f"completed: round {ROUNDS}/{ROUNDS} (homomorphic encryption)"
    assert lines[-1] == "published as deepgrow3d@v2"


def test_progress_of_a_job_that_has_not_started_or_is_cut(tmp_path):
    assert federated.federated_progress(tmp_path)["state"] == "created"
    (tmp_path / "events.jsonl").write_text('{"event": "state", "state": "running", "num_rounds": 3}\n'
                                           '{"event": "round", "round": 0, "global_dice": 0.5, "loc')
    progress = federated.federated_progress(tmp_path)
    assert progress["state"] == "running" and progress["rows"] == []
    assert federated.progress_lines(progress) == ["running: round 0/3"]
