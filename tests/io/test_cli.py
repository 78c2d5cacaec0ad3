"""The I/O commands, run for real: `claraseg demo`, `info`, `convert`, `phantom`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from claraseg.cli import main
from claraseg.io import read_image, resample_to


def test_demo_segments_the_sample_ct(data_dir, tmp_path, capsys):
    image = data_dir / "ct_abdomen_3mm" / "image.nii.gz"
    assert main(["demo", "--image", str(image), "--out", str(tmp_path), "--spacing", "6"]) == 0
    report = json.loads(capsys.readouterr().out)
    seg = read_image(tmp_path / "body_bone.seg.nrrd")
    assert {v: i.name for v, i in seg.labels.items()} == {1: "body", 2: "bone"}
    assert seg.same_grid(read_image(image)) and set(np.unique(seg.array)) == {0, 1, 2}
    assert 15_000 < report["body_ml"] < 40_000  # an adult abdomen over 336 mm of length
    assert 0.8 < report["bone_dice_vs_reference"] <= 1.0  # against the sample's bone labels
    assert report["bone_mask_delta_bytes"] < 50_000
    small = read_image(report["resampled"])
    np.testing.assert_allclose(small.spacing, 6.0)


def test_demo_command_as_a_user_runs_it(data_dir, tmp_path):
    env = dict(os.environ, CLARASEG_DATA=str(data_dir))
    out = subprocess.run([sys.executable, "-m", "claraseg", "demo", "--out", str(tmp_path / "o")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "o" / "body_bone.seg.nrrd").is_file()
    assert '"bone_dice_vs_reference"' in out.stdout


def test_demo_without_data_says_what_to_do(tmp_path, capsys):
    assert main(["demo", "--image", str(tmp_path / "nothing.nii.gz"), "--out", str(tmp_path)]) == 1
    assert "pass --image or set CLARASEG_DATA" in capsys.readouterr().err


def test_phantom_info_convert(tmp_path, capsys):
    img, lab = tmp_path / "p.nii.gz", tmp_path / "p.seg.nrrd"
    assert main(["phantom", "--seed", "2", "--size", "24", "20", "10", "--image", str(img), "--label", str(lab)]) == 0
    assert "liver" in capsys.readouterr().out
    assert main(["info", str(img)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_ijk"] == [24, 20, 10] and info["dtype"] == "int16"
    dcm = tmp_path / "dcm"
    from claraseg.io import write_dicom_series

    write_dicom_series(read_image(img), dcm)
    assert main(["convert", str(dcm), str(tmp_path / "back.nrrd")]) == 0
    back, orig = read_image(tmp_path / "back.nrrd"), read_image(img)
    # Same voxels at the same physical positions (DICOM turns a left-handed grid right-handed).
    np.testing.assert_array_equal(resample_to(back, orig, is_label=True).array, orig.array)
    assert main(["convert", str(lab), str(tmp_path / "lab.nii.gz"), "--label"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "lab.nii.gz")]) == 0
    assert json.loads(capsys.readouterr().out)["labels"]["1"] == "liver"
