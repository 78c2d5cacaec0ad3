"""How far does a DeepGrow 3D network carry one click? (the first-click diagnosis of large organs)

    python scripts/click_reach.py claraseg/models/bundles/deepgrow3d [other bundle dirs] [--json out.json]

Feeds each bundle's network a uniform "organ" that fills its whole ROI (intensity 0.5 plus 2 % noise,
seeded) with one foreground click at the centre, encoded as the engine encodes it (Gaussian of the
bundle's sigma at the first click's spacing), and prints the probability along a line from the click and
the radius (ROI voxels) where it falls below the bundle's threshold. A network that segmented what the
image shows would fill the ROI; a radius well inside it is the network's own limit.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def reach(bundle_dir: str, seed: int = 0) -> dict:
    import torch

    from claraseg.models.bundle import read_bundle
    from claraseg.models.inputs import deepgrow_sigma, interactive_input

    bundle = read_bundle(bundle_dir)
    if bundle.kind != "deepgrow3d":
        raise SystemExit(f"{bundle_dir}: a {bundle.kind} bundle; click_reach measures DeepGrow 3D networks")
    settings = bundle.settings
    net = bundle.load_network()
    size = [int(v) for v in settings["roi_size"]]
    spacing = np.full(3, float(settings["first_click_spacing_mm"]))
    rng = np.random.default_rng(seed)
    img = torch.from_numpy((0.5 + 0.02 * rng.standard_normal(size[::-1])).astype(np.float32))
    centre = np.array([(s - 1) / 2.0 for s in size])
    x = interactive_input(img, [np.rint(centre)], [], torch.zeros(img.shape), deepgrow_sigma(settings, spacing))
    with torch.no_grad():
        prob = torch.sigmoid(net(x[None].float()))[0, 0].numpy()
    c = np.rint(centre).astype(int)
    line = prob[c[2], c[1], c[0]:]
    below = np.flatnonzero(line < float(settings["threshold"]))
    radius = int(below[0]) if len(below) else len(line)
    return {"bundle": str(bundle_dir), "network": bundle.inference["network_def"].get("_target_"),
            "roi_size": size, "threshold": settings["threshold"], "radius_vox": radius,
            "radius_mm_at_first_click_spacing": radius * float(spacing[0]),
            "roi_half_width_vox": int(size[0] - c[0] - 1),
            "share_of_roi_above_threshold": round(float((prob > settings["threshold"]).mean()), 4),
            "probability_along_i": {str(r): round(float(line[r]), 3) for r in range(0, len(line), 2)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = [reach(b) for b in args.bundles]
    for r in out:
        print(f"{r['bundle']}: {r['network']}, the click's result ends {r['radius_vox']} voxels from it "
              f"({r['radius_mm_at_first_click_spacing']:.0f} mm at the first click's spacing; the ROI's half width "
              f"is {r['roi_half_width_vox']}), {100 * r['share_of_roi_above_threshold']:.1f} % of the ROI above the threshold")
    if args.json:
        from claraseg.models.bundle import write_json_atomic

        write_json_atomic(args.json, {"bundles": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
