"""DG3D click, then DEXTR3D re-fit on the refined mask's extreme points, fed back (the protocol clicks on it)."""
import os, numpy as np, torch
torch.set_num_threads(1)
import claraseg.engine.session as S_
import claraseg.engine.runners as R
from claraseg.engine.backend import LocalBackend
from claraseg.engine.masks import BoxMask
from claraseg.guidance import extreme_points
from claraseg.evaluate.heldout import heldout_structures, heldout_record
from claraseg.evaluate.runner import resolve_model
from claraseg.evaluate.protocol import _protocol_click, _ObjectMask, _nonzero_box, _union_box, dice
NCL = int(os.environ.get('NCL', 5)); PH = int(os.environ.get('PH', 1)); REFIT = int(os.environ.get('REFIT', 1))
MINV = int(os.environ.get('MINV', 20)); TTA = os.environ.get('TTA')
b = LocalBackend(os.environ.get('MODELS') or None)
dx = b.registry.get('dextr3d'); dxnet = b.registry.network('dextr3d', b.device)
dxs = dict(dx.settings)
if TTA: dxs['tta_flips'] = int(TTA)
orig = R.run_deepgrow
def wrapped(net, kind, settings, vol, mask, fg, bg, device, sa=None, si=None, new_clicks=None, **kw):
    start, crop = orig(net, kind, settings, vol, mask, fg, bg, device, sa, si, new_clicks, **kw)
    if not REFIT or kind != 'deepgrow3d' or not crop.size:
        return start, crop
    m2 = mask.copy(); m2.write(start, crop)
    if m2.is_empty or m2.crop.sum() < MINV:
        return start, crop
    pts = extreme_points(m2.crop.astype(bool)) + m2.start
    # the dextr volume has its own intensity normalisation
    dvol = SESS[0]._volume(dx)
    ds, dc = R.run_dextr(dxnet, dxs, dvol, np.asarray(pts, np.float64), device)
    if not dc.size:
        return start, crop
    new = BoxMask(mask.size); new.write(ds, dc)
    r = float(settings.get('click_radius_mm', 0))
    lo = np.minimum(np.asarray(ds), m2.start) if not m2.is_empty else np.asarray(ds)
    hi = np.maximum(np.asarray(ds) + np.asarray(dc.shape[::-1]), m2.stop)
    if not mask.is_empty:
        lo = np.minimum(lo, mask.start); hi = np.maximum(hi, mask.stop)
    out = new.region(lo, hi)
    G = float(os.environ.get('GATE', 0))
    if G:
        dg = m2.region(lo, hi).astype(bool); rf = out.astype(bool)
        agree = 2 * (dg & rf).sum() / max(1, dg.sum() + rf.sum())
        if agree < G:
            return start, crop
    if int(os.environ.get('CLICKS', 0)):
        rf = out
        def inside(p):
            c = np.asarray(p, np.int64) - lo
            return bool(np.all(c >= 0) and np.all(c < np.asarray(rf.shape[::-1])) and rf[c[2], c[1], c[0]])
        if not all(inside(p) for p in np.asarray(fg).reshape(-1, 3)) or any(inside(p) for p in np.asarray(bg).reshape(-1, 3)):
            return start, crop
    R.honour_clicks(out, lo, np.asarray(fg), np.asarray(bg), r, vol.spacing)
    return lo, out
S_.run_deepgrow = wrapped
SESS = []
d = resolve_model(b, 'deepgrow3d')
S = [s for s in heldout_structures(heldout_record(d), '/work/shared/data') if PH or not s.case.startswith('phantom')]
A = []
for s in S:
    sess = b.open_session(s.image); SESS[:] = [sess]; rng = np.random.default_rng(42)
    obj = _ObjectMask(s.truth.shape); region = _nonzero_box(s.truth)
    a = []
    for n in range(NCL):
        box = _union_box(region, obj.box)
        p, fg = _protocol_click(obj.full, s.truth, box, 'deepgrow3d', 2, rng)
        obj.apply(sess.click('deepgrow3d', foreground=[p] if fg else (), background=() if fg else [p], object_id='x'))
        a.append(dice(obj.full.astype(bool), s.truth))
    sess.close(); A.append(a)
    if os.environ.get('V'): print(f"{s.case[:18]:18s} {s.name[:14]:14s} " + ' '.join(f"{v:.2f}" for v in a), flush=True)
A = np.array(A)
print('REFIT', REFIT, 'all ', ' '.join(f"{v:.3f}" for v in A.mean(0)))
real = [i for i, s in enumerate(S) if not s.case.startswith('phantom')]
print('REFIT', REFIT, 'real', ' '.join(f"{v:.3f}" for v in A[real].mean(0)))
from claraseg.evaluate.protocol import number_of_clicks
if NCL >= 10: print('NoC85', np.mean([number_of_clicks(list(a) + [a[-1]] * (20 - len(a)), 0.85) for a in A]))
