"""The interactive bundles run as MONAI bundles: ``python -m monai.bundle run --config_file
configs/inference.json`` on a crop of the sample CT gives the mask the engine gives for the same clicks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from claraseg.evaluate.protocol import dice, extreme_points, next_click
from claraseg.io import Image, MaskDelta, read_image, write_image
from claraseg.models.registry import PACKAGED_DIR

ROOT = Path(__file__).resolve().parents[2]
#: The crop of the sample CT ([k, j, i] start and stop) around the right kidney.
CROP = ((56, 18, 58), (110, 66, 106))


def _crop(image: Image, lo, hi) -> Image:
    array = image.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy()
    origin = image.origin + image.direction @ (np.asarray(lo[::-1], np.float64) * image.spacing)
    return Image(array, origin, image.spacing, image.direction, labels=dict(image.labels),
                 metadata=dict(image.metadata))


@pytest.fixture(scope="module")
def kidney(ct_pair, tmp_path_factory):
    """(crop file, crop image, truth) of the right kidney."""
    image, label = ct_pair
    names = {info.name: v for v, info in label.labels.items()}
    crop, truth = _crop(image, *CROP), _crop(label, *CROP).array == names["kidney_right"]
    path = write_image(crop, tmp_path_factory.mktemp("bundle_inference") / "crop.nii.gz")
    return path, read_image(path), truth


@pytest.fixture(scope="module")
def engine():
    from claraseg.engine import LocalBackend

    backend = LocalBackend(PACKAGED_DIR, device="cpu", idle_timeout=None)
    yield backend
    backend.close()


def _monai_run(kind: str, out: Path, image: Path, **points) -> np.ndarray:
    """``python -m monai.bundle run`` in the bundle's folder, as a MONAI user runs it; the mask it wrote."""
    args = [a for key, value in points.items() for a in (f"--{key}", json.dumps(value))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                        "--image", str(image), *args, "--output", str(out)],
                       cwd=PACKAGED_DIR / kind, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return read_image(out, label=True).array


def _protocol_click(truth: np.ndarray) -> list[int]:
    (k, j, i), _ = next_click(np.zeros_like(truth), truth, np.random.default_rng(42))
    return [int(i), int(j), int(k)]


def test_deepgrow3d_and_dextr3d_bundles_run_by_monai_give_the_engine_mask(kidney, engine, tmp_path):
    path, image, truth = kidney
    click, points = _protocol_click(truth), extreme_points(truth)
    session = engine.open_session(image)
    try:
        by_engine = {"deepgrow3d": session.click("deepgrow3d", [click], object_id="a").to_full(),
                     "dextr3d": session.extreme_points("dextr3d", points, object_id="b").to_full()}
    finally:
        session.close()
    by_monai = {"deepgrow3d": _monai_run("deepgrow3d", tmp_path / "dg.nii.gz", path, foreground=[click]),
                "dextr3d": _monai_run("dextr3d", tmp_path / "dx.nii.gz", path, points=points)}
    for kind in by_engine:
        assert by_monai[kind].shape == truth.shape
        assert dice(by_monai[kind], by_engine[kind]) >= 0.99, kind
        assert dice(by_monai[kind], truth) > 0.6, kind  # a kidney, not an empty or full mask


def test_deepgrow_bundles_take_a_current_mask_and_2d_clicks(kidney, engine, tmp_path):
    """In-process ``monai.bundle.run``: a background click on a current mask given as a file (DeepGrow 3D),
    and a click on one slice (DeepGrow 2D), as the engine answers them."""
    from monai.bundle import run

    path, image, truth = kidney
    current = np.zeros(truth.shape, np.uint8)
    current[truth] = 1
    current[20:24] = 1  # a slab the object does not have
    write_image(image.with_array(current), tmp_path / "current.nii.gz")
    kji = np.argwhere(current.astype(bool) & ~truth)[0]
    bg = [int(kji[2]), int(kji[1]), int(kji[0])]
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    slice_truth = np.zeros_like(truth)
    slice_truth[k] = truth[k]
    fg2 = _protocol_click(slice_truth)
    session = engine.open_session(image)
    try:
        session.set_mask("a", MaskDelta((0, 0, 0), image.size_ijk, current, image.size_ijk))
        expect3 = session.click("deepgrow3d", [], [bg], object_id="a").to_full()
        expect2 = session.click("deepgrow2d", [fg2], object_id="b", slice_axis=2).to_full()
    finally:
        session.close()
    for kind, out, kwargs in (("deepgrow3d", "dg.nii.gz", {"mask": str(tmp_path / "current.nii.gz"), "background": [bg]}),
                              ("deepgrow2d", "dg2.nii.gz", {"foreground": [fg2], "slice_axis": 2})):
        bundle = PACKAGED_DIR / kind
        run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=False, bundle_root=str(bundle), image=str(path), output=str(tmp_path / out), **kwargs)
    got3 = read_image(tmp_path / "dg.nii.gz", label=True).array
    got2 = read_image(tmp_path / "dg2.nii.gz", label=True).array
    assert dice(got3, expect3) >= 0.99 and not got3[kji[0], kji[1], kji[2]]
    assert dice(got2, expect2) >= 0.99 and got2[k].any() and not np.delete(got2, k, axis=0).any()


def test_no_request_data_reaches_the_run_entries_of_inference_json(tmp_path):
    """The pipeline entries of inference.json (the run's inputs, transforms, expressions) are not job
    overrides a client may send (claraseg.server.validation), and the engine builds a network from the file
    without running its pipeline: a copy whose pipeline cannot run still gives its network."""
    import shutil

    from claraseg.errors import ConfigError
    from claraseg.models.bundle import read_bundle
    from claraseg.server.validation import check_overrides

    inference = read_bundle(PACKAGED_DIR / "deepgrow3d").inference
    for key in ("image", "foreground", "output", "run", "network", "models_dir", "preprocessing#transforms#0#keys",
                "inferer#network", "postprocessing#transforms#2#output", "imports"):
        assert key.split("#")[0] in inference
        with pytest.raises(ConfigError, match="not allowed from a client"):
            check_overrides({key: "/tmp/x"})
    copy = shutil.copytree(PACKAGED_DIR / "deepgrow3d", tmp_path / "deepgrow3d")
    broken = {**inference, "run": ["$1 / 0"], "preprocessing": {"_target_": "no.such.Transform"}}
    (copy / "configs" / "inference.json").write_text(json.dumps(broken))
    net = read_bundle(copy).build_network()
    assert sum(p.numel() for p in net.parameters()) > 0
