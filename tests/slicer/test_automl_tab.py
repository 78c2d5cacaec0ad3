"""The AutoML tab: the command it starts is the real CLI's, and it reads the real report files."""

from __future__ import annotations

import argparse
import json

import pytest
from ClaraTrainModuleLib import automl

from claraseg.errors import ConfigError


def test_command_is_understood_by_claraseg_automl(tmp_path):
    from claraseg.automl.cli import register

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    data = tmp_path / "datalist.json"
    data.write_text("[]")
    s = automl.AutoMLSettings(str(bundle), str(data), str(tmp_path / "study"), trials=6, workers=2,
                              timeout_s=600, storage="sqlite:///x.db").validate()
    cmd = s.command(python="python")
    assert cmd[:4] == ["python", "-m", "claraseg", "automl"]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(cmd[3:])
    assert (args.bundle, args.data, args.job_dir) == (str(bundle), str(data), str(tmp_path / "study"))
    assert (args.trials, args.workers, args.timeout, args.storage) == (6, 2, 600.0, "sqlite:///x.db")
    with pytest.raises(ConfigError) as e:
        automl.AutoMLSettings(str(tmp_path / "none"), str(tmp_path / "none.json"), "j", trials=0, workers=0).validate()
    assert all(w in str(e.value) for w in ("trials", "workers", "bundle folder", "datalist"))


def test_reads_the_report_files_the_search_writes(tmp_path):
    from claraseg.automl.report import write_tables

    assert automl.read_trials(tmp_path) == [] and automl.summary_line(tmp_path) == ""
    rows = [
        {"number": 0, "state": "complete", "dice": 0.61, "duration_s": 12.0, "default": True, "param:lr": 1e-4},
        {"number": 1, "state": "pruned", "dice": 0.3, "duration_s": 4.5, "default": False, "param:lr": 1e-2},
        {"number": 2, "state": "complete", "dice": 0.68, "duration_s": 11.0, "default": False, "param:lr": 3e-4},
        {"number": 3, "state": "running", "dice": None, "duration_s": None, "default": False, "param:lr": 5e-4},
    ]
    write_tables(rows, tmp_path)
    read = automl.read_trials(tmp_path)
    assert [r["number"] for r in read] == [0, 1, 2, 3]
    header, body = automl.table(read)
    assert header == ["number", "state", "dice", "duration_s", "default", "lr"]
    assert body[0] == ["0", "complete", "0.61", "12", "yes", "0.0001"] and body[3][2] == ""
    assert automl.best_trial(read)["number"] == 2
    with pytest.raises(ConfigError, match="no best result yet"):
        automl.best_overrides(tmp_path)
    (tmp_path / "best_overlay.json").write_text(json.dumps({"optimizer#lr": 3e-4}))
    assert automl.best_overrides(tmp_path) == {"optimizer#lr": 3e-4}
    (tmp_path / "trials.json").write_text("[{")  # being rewritten
    assert automl.read_trials(tmp_path) == []


def test_availability_names_what_is_missing():
    ok, why = automl.automl_available()
    assert ok and why == ""  # this environment has claraseg.automl and optuna


def test_last_log_line(tmp_path):
    log = tmp_path / "automl.log"
    assert automl.last_log_line(log) == "see the log"
    log.write_text("starting\nConfigError: the bundle declares no 'search' elements\n\n")
    assert automl.last_log_line(log) == "ConfigError: the bundle declares no 'search' elements"


def test_search_space_of_a_real_bundle_is_described():
    from pathlib import Path

    import claraseg.automl

    bundle = Path(claraseg.automl.__file__).parent / "bundles" / "tiny_seg"
    if not bundle.is_dir():
        pytest.skip("claraseg/automl/bundles/tiny_seg is not there")
    lines = automl.describe_search_space(bundle)
    assert any(line.startswith("lr: ") and "log scale" in line for line in lines)
    assert any(line.startswith("net: one of ") for line in lines)
