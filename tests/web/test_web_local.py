"""Clara Annotate Web with the in-process engine (``python -m ClaraAnnotateWeb``, no server) on a datastore
folder: upload an image from the browser, click the spleen, save (the upload goes into the datastore first),
paint with Slicer's Paint effect and save again.
Debian's Chromium driven by Playwright; a screenshot per test under artifacts/web/ (path printed).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from webtest_support import (
    SAMPLE,
    AppProcess,
    axial_view,
    choose_tool,
    click_view_center,
    deepest_point_ras,
    launch,
    require_browser,
    sample_label,
    set_state,
    state,
    wait_state,
)

require_browser()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("web-local")


@pytest.fixture(scope="module")
def page(workdir):
    from playwright.sync_api import sync_playwright

    app = AppProcess(workdir, "--datastore", str(workdir / "datastore"))
    try:
        app.wait_ready()
        with sync_playwright() as pw:
            context = launch(pw, workdir / "chromium-profile")
            try:
                pg = context.new_page()
                pg.goto(app.url)
                wait_state(pg, "s('clara_images') && s('clara_images').length > 0", 60)
                yield pg
            finally:
                context.close()
    finally:
        app.stop()


def test_upload_click_and_save_in_process(page, workdir):
    from claraseg.io import read_image
    from claraseg.io.geometry import physical_to_index

    assert "in-process engine" in state(page, "clara_connection")
    page.locator("input[type=file]").first.set_input_files(str(SAMPLE / "image.nii.gz"))
    wait_state(page, "s('clara_image_loaded')", 120)
    assert state(page, "clara_image") is None  # not in the datastore yet

    truth, _ = sample_label()
    ras = deepest_point_ras(truth.array == 1, truth)
    set_state(page, "clara_center_on", ras)
    choose_tool(page, "foreground")
    click_view_center(page, axial_view(page))
    wait_state(page, "(s('clara_points') || {}).foreground === 1", 120)
    wait_state(page, "s('clara_results') > 0 || s('clara_status_level') === 'error'", 300)
    assert state(page, "clara_status_level") != "error", state(page, "clara_status")
    last = state(page, "clara_last")
    assert last["ijk"] == np.rint(physical_to_index(truth, ras, ras=True)).astype(int).ravel().tolist()

    page.click("#clara-save")
    wait_state(page, "(s('clara_saved') || {}).version === 1 || s('clara_status_level') === 'error'", 60)
    assert state(page, "clara_status_level") != "error", state(page, "clara_status")
    image_id = state(page, "clara_saved")["image"]
    assert image_id == state(page, "clara_image") == "image"  # stored under the uploaded file's name
    store = workdir / "datastore"
    uploaded = read_image(store / "images" / image_id / "image.nii.gz")
    original = read_image(SAMPLE / "image.nii.gz")
    np.testing.assert_array_equal(uploaded.array, original.array)
    np.testing.assert_allclose(uploaded.origin, original.origin, atol=1e-3)
    label = read_image(store / "labels" / image_id / "final" / "v0001.nii.gz", label=True)
    record = json.loads((store / "labels" / image_id / "final" / "v0001.json").read_text())
    assert label.size_ijk == original.size_ijk and record["values"] == [1]
    dice = 2.0 * np.logical_and(label.array == 1, truth.array == 1).sum() / ((label.array == 1).sum() + (truth.array == 1).sum())
    print(f"Dice of one in-process click in the spleen: {dice:.3f}")
    assert dice > 0.5, dice


def test_paint_adds_to_the_segment(page, workdir):
    """Slicer's own Paint effect, driven through the page: a stroke beside the clicked spleen, saved."""
    from claraseg.io import read_image

    store = workdir / "datastore" / "labels" / "image" / "final"
    before = int((read_image(store / "v0001.nii.gz", label=True).array == 1).sum())
    page.click("#clara-tool-foreground")  # stop placing points: the views go to the effect
    wait_state(page, "s('clara_placing') === ''", 60)
    page.locator("button", has=page.locator("i.mdi-brush")).first.click()
    wait_state(page, "String(s('SegmentEditorState__active_effect_name')).endsWith('Paint')", 60)
    view = axial_view(page)
    box = view.bounding_box()
    x0, y = box["x"] + box["width"] / 2 - 60, box["y"] + box["height"] / 2  # towards the body's middle
    page.mouse.move(x0 + 20, y)  # hover first: the effect takes the view's focus
    time.sleep(0.5)
    page.mouse.move(x0, y)
    time.sleep(0.5)
    page.mouse.down()
    time.sleep(0.5)
    for n in range(1, 21):
        page.mouse.move(x0 - 4 * n, y)
        time.sleep(0.1)
    time.sleep(0.5)
    page.mouse.up()
    time.sleep(2.0)
    page.click("#clara-save")
    wait_state(page, "(s('clara_saved') || {}).version === 2 || s('clara_status_level') === 'error'", 60)
    assert state(page, "clara_status_level") != "error", state(page, "clara_status")
    after = int((read_image(store / "v0002.nii.gz", label=True).array == 1).sum())
    print(f"paint stroke: {before} -> {after} voxels")
    assert after > before
