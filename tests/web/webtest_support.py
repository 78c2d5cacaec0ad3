"""Helpers of the browser tests and the click-to-render benchmark: Chromium, the app process, the page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from claraseg.server.webapp import stop_process

ROOT = Path(__file__).resolve().parents[2]
#: Debian's Chromium (installed by .ci/run); CLARASEG_CHROMIUM overrides.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Where screenshots go (gitignored).
ARTIFACTS = Path(os.environ.get("CLARASEG_ARTIFACTS", ROOT / "artifacts")) / "web"
SAMPLE = Path(os.environ.get("CLARASEG_DATA", ROOT.parent / "shared" / "data")) / "ct_abdomen_3mm"


def find_chromium() -> str | None:
    env = os.environ.get("CLARASEG_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for c in CHROMIUM_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("chromium")


def missing() -> list[str]:
    """What the browser tests need and cannot find (empty when they can run)."""
    import importlib.util

    from ClaraAnnotateWeb import missing_requirements

    out = [f"python package {m} (the web extra)" for m in missing_requirements()]
    if importlib.util.find_spec("playwright") is None:
        out.append("python package playwright (the dev extra)")
    if find_chromium() is None:
        out.append("Chromium (/usr/bin/chromium: apt-get install chromium, as .ci/run does)")
    if not (SAMPLE / "image.nii.gz").is_file():
        out.append(f"the sample CT ({SAMPLE})")
    return out


def require_browser() -> None:
    """Skip the calling test module, naming what is missing; under CI (``CI`` set) fail instead."""
    import pytest

    lacking = missing()
    if lacking:
        if os.environ.get("CI"):
            raise RuntimeError("the browser tests need: " + "; ".join(lacking))
        pytest.skip("the browser tests need: " + "; ".join(lacking), allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """``python -m ClaraAnnotateWeb`` (in-process engine) on a free loopback port, logging to a file; with
    ``serve=True``, ``python -m claraseg serve`` instead: the API on one port, the web app beside it."""

    def __init__(self, workdir: Path, *extra: str, threads: int = 2, serve: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = workdir / ("serve.log" if serve else "web-app.log")
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": str(threads), "CLARASEG_USER_MODELS": str(workdir / "user-models")}
        if serve:
            self.api_port = free_port()
            self.api_url = f"http://127.0.0.1:{self.api_port}"
            cmd = [sys.executable, "-m", "claraseg", "serve", "--port", str(self.api_port), "--web-port",
                   str(self.port), "--sample-data", str(SAMPLE.parent), "--log-format", "text", *extra]
        else:
            cmd = [sys.executable, "-m", "ClaraAnnotateWeb", "--port", str(self.port), "--threads", str(threads),
                   "--sample-data", str(SAMPLE.parent), *extra]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the web app exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"the web app did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def launch(playwright, user_data_dir: Path):
    """Chromium headless with a fresh profile (a persistent context, so the profile folder is ours)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 900}, accept_downloads=True)


def state(page, key: str):
    return page.evaluate("k => window.trame.state.get(k)", key)


def set_state(page, key: str, value) -> None:
    page.evaluate("([k, v]) => window.trame.state.set(k, v)", [key, value])


def wait_state(page, predicate: str, timeout_s: float = 60.0) -> None:
    """Wait until a JS expression over ``s`` (``window.trame.state.get``) holds."""
    page.wait_for_function("(() => { const s = k => (window.trame && window.trame.state) ? "
                           f"window.trame.state.get(k) : undefined; return {predicate}; }})()",
                           timeout=timeout_s * 1000, polling=50)


def axial_view(page, timeout_s: float = 60.0):
    """The axial slice view's image (the first view of the default layout), once a frame has arrived."""
    view = page.locator("img.image-display-area").first
    view.wait_for(state="visible", timeout=timeout_s * 1000)
    return view


def sample_label(value: int = 1):
    from claraseg.io import read_image

    return read_image(SAMPLE / "label.nii.gz", label=True), value


def deepest_point_ras(mask_kji: np.ndarray, image) -> list[float]:
    """The voxel of a mask farthest from its boundary, in world RAS (inside even a concave organ)."""
    from scipy import ndimage

    from claraseg.io.geometry import index_to_physical

    dist = ndimage.distance_transform_edt(np.pad(mask_kji, 1))[1:-1, 1:-1, 1:-1]  # the image border is a boundary
    k, j, i = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [float(v) for v in index_to_physical(image, [i, j, k], ras=True).ravel()]


def extreme_points_ras(mask_kji: np.ndarray, image) -> list[list[float]]:
    """Six extreme points (min and max along i, j, k) of a mask, world RAS."""
    from claraseg.io.geometry import index_to_physical

    kji = np.argwhere(mask_kji)
    pts = []
    for axis in (2, 1, 0):
        for pick in (np.argmin, np.argmax):
            k, j, i = kji[pick(kji[:, axis])]
            pts.append([float(v) for v in index_to_physical(image, [i, j, k], ras=True).ravel()])
    return pts


def choose_tool(page, tool: str) -> None:
    """Press a Clara tool button and wait until the server has put the views in its placing mode."""
    page.click(f"#clara-tool-{tool}")
    wait_state(page, f"s('clara_placing') === '{tool}'", 60)


def click_view_center(page, locator) -> None:
    box = locator.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path
