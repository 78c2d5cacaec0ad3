"""Fine-tune settings -> job overrides the training part accepts; datalists it reads."""

from __future__ import annotations

import numpy as np
import pytest
from ClaraTrainModuleLib import jobs

from claraseg.backend import ModelDescriptor
from claraseg.errors import ConfigError, TrainingDataError
from claraseg.io import make_phantom, write_image


def test_overrides_are_settings_the_training_part_validates():
    from monai.bundle import ConfigParser

    from claraseg.train.config import settings_from

    s = jobs.FineTuneSettings(model="deepgrow3d", kind="deepgrow3d", iterations=30, epochs=4, learning_rate=3e-4,
                              val_split=0.25, amp=False, smart_cache=True, seed=7).validate()
    o = s.overrides()
    assert o["optimizer#lr"] == 3e-4
    training = {k.split("#", 1)[1]: v for k, v in o.items() if k.startswith("training#")}
    settings = settings_from(ConfigParser({"training": training}))  # raises on unknown names or wrong types
    assert settings["max_iterations"] == 30 and settings["max_epochs"] == 4 and settings["dataset"] == "smart"
    assert settings["val_fraction"] == 0.25 and settings["amp"] is False and settings["seed"] == 7
    assert "training#max_epochs" not in jobs.FineTuneSettings(model="m", kind="segmentation").overrides()


def test_invalid_settings_name_every_problem():
    with pytest.raises(ConfigError) as e:
        jobs.FineTuneSettings(model="", kind="segmentation", iterations=0, learning_rate=2.0, val_split=1.0,
                              device="tpu").validate()
    msg = str(e.value)
    for part in ("pick the model", "iterations", "learning rate", "validation split", "device"):
        assert part in msg


def test_datalist_is_read_back_by_the_training_part(tmp_path):
    from claraseg.train.data import read_datalist

    image, label = make_phantom(seed=2, size_ijk=(24, 24, 12))
    cases = []
    for n in range(2):
        ip, lp = tmp_path / f"c{n}_image.nii.gz", tmp_path / f"c{n}_label.nii.gz"
        write_image(image, ip)
        write_image(label.with_array(label.array.astype(np.uint8)), lp)
        cases.append(jobs.Case(str(ip), str(lp), {1: "spleen", 2: "liver"}, f"case{n}"))
    path = jobs.write_datalist(cases, tmp_path / "data")
    entries, validation = read_datalist(path)
    assert validation is None and len(entries) == 2
    assert entries[0]["image"] == str(tmp_path / "c0_image.nii.gz")
    assert {int(k): v for k, v in entries[1]["labels"].items()} == {1: "spleen", 2: "liver"}
    with pytest.raises(TrainingDataError, match="at least one"):
        jobs.write_datalist([], tmp_path)
    with pytest.raises(TrainingDataError, match="missing"):
        jobs.write_datalist([jobs.Case(str(tmp_path / "nope.nii.gz"), str(lp))], tmp_path)


def test_case_counts_and_bundle_location(tmp_path):
    jobs.check_enough_cases(1, "deepgrow3d", 0.2)
    with pytest.raises(TrainingDataError, match="at least two"):
        jobs.check_enough_cases(1, "segmentation", 0.2)
    m = ModelDescriptor("deepgrow3d", "deepgrow3d")
    assert jobs.bundle_for(m, tmp_path) == tmp_path / "deepgrow3d"
    m.extra["bundle"] = "/models/deepgrow3d@v2"
    assert str(jobs.bundle_for(m)) == "/models/deepgrow3d@v2"
    with pytest.raises(ConfigError, match="where model"):
        jobs.bundle_for(ModelDescriptor("x", "dextr3d"))


def test_remote_job_reports_the_servers_refusal(standin_server):
    s = jobs.FineTuneSettings(model="grow3d", kind="deepgrow3d", iterations=2)
    job = jobs.RemoteJob(standin_server.url, standin_server.token, "grow3d", s, ["case0"])
    with pytest.raises(ConfigError, match=r"the server refused \(501\): .*not available"):
        job.start()
    bad = jobs.RemoteJob(standin_server.url, "wrong-token-000000", "grow3d", s)
    with pytest.raises(ConfigError, match=r"refused \(401\)"):
        bad.start()
