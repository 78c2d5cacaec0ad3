"""LOCAL=1: keep only the changes connected to the new click. KIND=dextr3d runs extreme points first."""
import os, numpy as np, torch
from scipy import ndimage
torch.set_num_threads(1)
import claraseg.engine.session as S_
import claraseg.engine.runners as R
from claraseg.engine.backend import LocalBackend
from claraseg.evaluate.heldout import heldout_structures, heldout_record
from claraseg.evaluate.runner import resolve_model
from claraseg.evaluate.protocol import _protocol_click, _ObjectMask, _nonzero_box, _union_box, dice, extreme_points
LOCAL = int(os.environ.get('LOCAL', 0)); NCL = int(os.environ.get('NCL', 5)); PH = int(os.environ.get('PH', 0))
KIND = os.environ.get('KIND', 'deepgrow3d'); GROWR = float(os.environ.get('GROWR', 0))
orig = R.run_deepgrow
HYST = os.environ.get('HYST')
_stash = {}
_op = R._paste_roi
def _paste(prob, roi, vol, threshold):
    start, stop = roi.covered_box(vol.spacing, vol.size)
    if np.any(stop <= start):
        return _op(prob, roi, vol, threshold)
    back = R.sample_from_roi(prob, roi, vol.spacing, start, stop).numpy()
    _stash['p'] = (start, back)
    return start, (back > threshold).astype(np.uint8)
R._paste_roi = _paste
def wrapped(net, kind, settings, vol, mask, fg, bg, device, sa=None, si=None, new_clicks=None, **kw):
    start, crop = orig(net, kind, settings, vol, mask, fg, bg, device, sa, si, new_clicks, **kw)
    if HYST and kind == 'deepgrow3d' and not mask.is_empty and crop.size:
        ta, tr = (float(v) for v in HYST.split(','))
        st0, back = _stash['p']
        if back.shape == crop.shape:
            stop = np.asarray(start) + np.asarray(crop.shape[::-1])
            old = mask.region(start, stop).astype(bool)
            new = np.where(old, back > tr, back > ta).astype(np.uint8)
            # clicks still honoured
            R.honour_clicks(new, start, np.asarray(fg), np.asarray(bg), float(settings.get('click_radius_mm', 0)), vol.spacing)
            crop = new
    RAD = float(os.environ.get('RAD', 0))
    REL = float(os.environ.get('REL', 0))
    MINCL = int(os.environ.get('MINCL', 0))
    if REL and not mask.is_empty and len(fg) + len(bg) > MINCL:
        ext = float(((mask.stop - mask.start) * vol.spacing).max())
        RAD = max(REL * ext, 2 * float(max(vol.spacing)))
    if RAD and kind == 'deepgrow3d' and not mask.is_empty and crop.size:
        stop = np.asarray(start) + np.asarray(crop.shape[::-1])
        old = mask.region(start, stop)
        pts = np.concatenate([np.asarray(new_clicks[0]).reshape(-1, 3), np.asarray(new_clicks[1]).reshape(-1, 3)])
        kk, jj, ii = np.ogrid[:crop.shape[0], :crop.shape[1], :crop.shape[2]]
        near = np.zeros(crop.shape, bool)
        for p in pts:
            c = np.asarray(p) - start
            d2 = ((ii - c[0]) * vol.spacing[0]) ** 2 + ((jj - c[1]) * vol.spacing[1]) ** 2 + ((kk - c[2]) * vol.spacing[2]) ** 2
            near |= d2 <= RAD ** 2
        crop = np.where(near, crop, old).astype(np.uint8)
    if not LOCAL or kind != 'deepgrow3d' or mask.is_empty or not crop.size:
        return start, crop
    stop = np.asarray(start) + np.asarray(crop.shape[::-1])
    old = mask.region(start, stop)
    change = old != crop
    lab, n = ndimage.label(change, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return start, crop
    keep = set()
    pts = np.concatenate([np.asarray(new_clicks[0]).reshape(-1, 3), np.asarray(new_clicks[1]).reshape(-1, 3)])
    r = 2
    for p in pts:
        c = (np.asarray(p) - start)[::-1]
        lo = np.maximum(c - r, 0); hi = np.minimum(c + r + 1, crop.shape)
        if np.any(hi <= lo): continue
        keep |= set(np.unique(lab[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]).tolist()) - {0}
    if not keep:
        return start, old
    sel = np.isin(lab, sorted(keep))
    out = old.copy(); out[sel] = crop[sel]
    return start, out
S_.run_deepgrow = wrapped
b = LocalBackend()
d = resolve_model(b, KIND if KIND in ('deepgrow3d', 'dextr3d') else 'deepgrow3d')
S = [s for s in heldout_structures(heldout_record(d), '/work/shared/data') if PH or not s.case.startswith('phantom')]
res = []
for s in S:
    sess = b.open_session(s.image)
    rng = np.random.default_rng(42)
    obj = _ObjectMask(s.truth.shape); region = _nonzero_box(s.truth)
    ds = []
    for n in range(NCL):
        if n == 0 and KIND in ('dilate', 'erode', 'shift'):
            from claraseg.io import MaskDelta
            t = s.truth
            if KIND == 'dilate': m = ndimage.binary_dilation(t, iterations=2)
            elif KIND == 'erode': m = ndimage.binary_erosion(t, iterations=2)
            else: m = np.roll(t, 3, axis=2)
            sess.set_mask('x', MaskDelta.from_full(m.astype(np.uint8)))
            delta = MaskDelta.from_full(m.astype(np.uint8))
        elif n == 0 and KIND == 'dextr3d':
            delta = sess.extreme_points('dextr3d', extreme_points(s.truth), object_id='x')
        else:
            box = _union_box(region, obj.box)
            p, fg = _protocol_click(obj.full, s.truth, box, 'deepgrow3d', 2, rng)
            delta = sess.click('deepgrow3d', foreground=[p] if fg else (), background=() if fg else [p], object_id='x')
        obj.apply(delta)
        ds.append(dice(obj.full.astype(bool), s.truth))
    sess.close(); res.append(ds)
    if os.environ.get('V'): print(f"{s.case[:18]:18s} {s.name[:14]:14s} " + ' '.join(f"{v:.2f}" for v in ds), flush=True)
r = np.array(res)
print(KIND, 'LOCAL', LOCAL, 'mean', ' '.join(f"{v:.3f}" for v in r.mean(0)), flush=True)
