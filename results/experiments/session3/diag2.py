"""variants: ITER=n extra self-iterations; GROW=1 grow passes on refinement; FCS=mm first click spacing"""
import os, sys, numpy as np, torch
torch.set_num_threads(1)
import claraseg.engine.session as S_
import claraseg.engine.runners as R
from claraseg.engine.backend import LocalBackend
from claraseg.evaluate.heldout import heldout_structures, heldout_record
from claraseg.evaluate.runner import resolve_model
from claraseg.evaluate.protocol import _protocol_click, _ObjectMask, _nonzero_box, _union_box, dice
ITER = int(os.environ.get('ITER', 0)); NCL = int(os.environ.get('NCL', 5)); PH = int(os.environ.get('PH', 0))
orig = R.run_deepgrow
def wrapped(net, kind, settings, vol, mask, fg, bg, device, sa=None, si=None, new_clicks=None, **kw):
    start, crop = orig(net, kind, settings, vol, mask, fg, bg, device, sa, si, new_clicks, **kw)
    if ITER == 0 or kind != 'deepgrow3d':
        return start, crop
    m2 = mask.copy(); m2.write(start, crop)
    for _ in range(ITER):
        st, cr = orig(net, kind, settings, vol, m2, fg, bg, device, sa, si, new_clicks)
        m2.write(st, cr)
    boxes = [(m.start, m.stop) for m in (mask, m2) if not m.is_empty]
    lo = np.min([b[0] for b in boxes], axis=0); hi = np.max([b[1] for b in boxes], axis=0)
    return lo, m2.region(lo, hi)
S_.run_deepgrow = wrapped
b = LocalBackend(os.environ.get('MODELS') or None)
reg = b.registry
d = resolve_model(b, 'deepgrow3d')
st = reg.get('deepgrow3d').settings
for k, v in os.environ.items():
    if k.startswith('SET_'):
        st[k[4:].lower()] = float(v)
S = [s for s in heldout_structures(heldout_record(d), '/work/shared/data') if PH or not s.case.startswith('phantom')]
res = []
for s in S:
    sess = b.open_session(s.image)
    rng = np.random.default_rng(42)
    obj = _ObjectMask(s.truth.shape); region = _nonzero_box(s.truth)
    row = []; ds = []
    for n in range(NCL):
        box = _union_box(region, obj.box)
        p, fg = _protocol_click(obj.full, s.truth, box, 'deepgrow3d', 2, rng)
        delta = sess.click('deepgrow3d', foreground=[p] if fg else (), background=() if fg else [p], object_id='x')
        obj.apply(delta)
        pr = obj.full.astype(bool); t = s.truth
        ds.append(dice(pr, t))
        row.append(f"{'F' if fg else 'B'} {ds[-1]:.2f} v{pr.sum()/t.sum():.2f}")
    sess.close()
    res.append(ds)
    if os.environ.get('V'):
        print(f"{s.case[:18]:18s} {s.name[:14]:14s} {int(s.truth.sum()):6d} | " + ' | '.join(row), flush=True)
r = np.array(res)
print('mean dice per click', ' '.join(f"{v:.3f}" for v in r.mean(0)), flush=True)
