"""Click-to-render benchmark of Clara Annotate Web (a command, not a test).

``python -m ClaraAnnotateWeb.bench [--clicks 20] [--threads 2] [--out results/web_click_to_render.json]``

Starts the web app (in-process engine, ``--threads`` PyTorch threads) on the sample CT, drives Debian's
Chromium with Playwright and, per repetition: clears the segment, then clicks inside the spleen in the
axial view. The browser records the click's ``pointerdown`` and the first frame of the axial view whose
probe pixel (beside the point's marker) shows the segment's colour: that interval is *click to render*.
The app reports, for the same click, the engine call's own time (``engine``) and the time from the point
event to the segment written (``server``). Prints and writes the medians and 95th percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: In the page: timestamp the click and watch the axial view's frames for the segment's colour.
PROBE_JS = """
([dx, dy]) => {
  const img = document.querySelector('img.image-display-area');
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const bench = window.__claraBench = {down: null, rendered: null, frames: 0};
  const tinted = () => {
    const w = img.naturalWidth, h = img.naturalHeight;
    if (!w || !h) return false;
    canvas.width = w; canvas.height = h;
    ctx.drawImage(img, 0, 0);
    const sx = w / img.clientWidth, sy = h / img.clientHeight;
    const [r, g, b] = ctx.getImageData(Math.round((img.clientWidth / 2 + dx) * sx),
                                       Math.round((img.clientHeight / 2 + dy) * sy), 1, 1).data;
    return r - b > 40;  // the segment's orange over grey CT
  };
  document.addEventListener('pointerdown', () => { bench.down = performance.now(); bench.rendered = null; }, true);
  img.addEventListener('load', () => {
    bench.frames += 1;
    if (bench.down !== null && bench.rendered === null && tinted()) bench.rendered = performance.now();
  });
  return true;
}
"""


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def run(clicks: int, threads: int, workdir: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "web"))
    import webtest_support as W
    from playwright.sync_api import sync_playwright

    problems = W.missing()
    if problems:
        raise SystemExit("the benchmark needs: " + "; ".join(problems))
    truth, _ = W.sample_label()
    spleen = truth.array == 1
    center = W.deepest_point_ras(spleen, truth)
    app = W.AppProcess(workdir, "--datastore", str(workdir / "datastore"), threads=threads)
    rows = []
    try:
        app.wait_ready()
        with sync_playwright() as pw:
            context = W.launch(pw, workdir / "chromium-profile")
            page = context.new_page()
            page.goto(app.url)
            W.wait_state(page, "s('clara_images') && s('clara_images').length > 0", 60)
            W.set_state(page, "clara_image", "ct_abdomen_3mm")
            W.wait_state(page, "s('clara_image_loaded')", 60)
            W.set_state(page, "clara_center_on", center)
            view = W.axial_view(page)
            page.evaluate(PROBE_JS, [12, 12])
            page.click("#clara-tool-foreground")
            for n in range(clicks + 1):  # the first click opens the session: reported apart
                if n:
                    page.click("#clara-clear")
                    W.wait_state(page, "s('clara_voxels') === 0 && !s('clara_busy')", 120)
                    time.sleep(0.5)  # let the cleared frame arrive
                before = W.state(page, "clara_results")
                W.click_view_center(page, view)
                W.wait_state(page, f"s('clara_results') > {before} || s('clara_status_level') === 'error'", 600)
                page.wait_for_function("window.__claraBench.rendered !== null", timeout=60_000, polling=10)
                bench = page.evaluate("window.__claraBench")
                last = W.state(page, "clara_last")
                rows.append({"click_to_render_s": (bench["rendered"] - bench["down"]) / 1000.0,
                             "server_s": last["seconds"], "engine_s": last["engine_seconds"],
                             "voxels": last["voxels"]})
                print(f"click {n}: click->render {rows[-1]['click_to_render_s'] * 1000:.0f} ms, "
                      f"engine {last['engine_seconds'] * 1000:.0f} ms", flush=True)
                W.set_state(page, "clara_center_on", None)
                W.set_state(page, "clara_center_on", center)
            W.screenshot(page, "bench-last-click")
            context.close()
    finally:
        app.stop()
    first, steady = rows[0], rows[1:]

    def summary(key):
        vals = [r[key] for r in steady]
        return {"median_ms": round(1000 * statistics.median(vals), 1), "p95_ms": round(1000 * percentile(vals, 95), 1)}

    c2r, eng = summary("click_to_render_s"), summary("engine_s")
    return {
        "what": "Clara Annotate Web: browser click (pointerdown) to the first axial frame showing the segment",
        "image": "ct_abdomen_3mm (122x101x112, 3 mm), one DeepGrow 3D foreground click inside the spleen, "
                 "segment cleared between clicks",
        "model": "deepgrow3d", "torch_threads": threads, "clicks": len(steady),
        "click_to_render": c2r, "engine": eng, "server": summary("server_s"),
        "engine_share_of_median": round(eng["median_ms"] / c2r["median_ms"], 3),
        "first_click_with_session_open_ms": round(1000 * first["click_to_render_s"], 1),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "load_average_1_5_15_at_end": [round(v, 1) for v in os.getloadavg()]},
        "rows": steady,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ClaraAnnotateWeb.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clara-web-bench-") as tmp:
        result = run(args.clicks, args.threads, Path(tmp))
    c2r, eng = result["click_to_render"], result["engine"]
    print(f"click to render: median {c2r['median_ms']:.0f} ms, p95 {c2r['p95_ms']:.0f} ms over {result['clicks']} clicks; "
          f"engine median {eng['median_ms']:.0f} ms ({100 * result['engine_share_of_median']:.0f}% of it); "
          f"first click (session open) {result['first_click_with_session_open_ms']:.0f} ms")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from claraseg.io import write_text_atomic

        write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
