"""After each DG3D click, DEXTR3D on the current mask's extreme points: does it beat the mask?"""
import os, numpy as np, torch
torch.set_num_threads(1)
from claraseg.engine.backend import LocalBackend
from claraseg.guidance import extreme_points
from claraseg.evaluate.heldout import heldout_structures, heldout_record
from claraseg.evaluate.runner import resolve_model
from claraseg.evaluate.protocol import _protocol_click, _ObjectMask, _nonzero_box, _union_box, dice
NCL = int(os.environ.get('NCL', 5)); PH = int(os.environ.get('PH', 1))
b = LocalBackend(); d = resolve_model(b, 'deepgrow3d')
S = [s for s in heldout_structures(heldout_record(d), '/work/shared/data') if PH or not s.case.startswith('phantom')]
A, B, C = [], [], []
for s in S:
    sess = b.open_session(s.image); rng = np.random.default_rng(42)
    obj = _ObjectMask(s.truth.shape); region = _nonzero_box(s.truth)
    a, bb, cc = [], [], []
    for n in range(NCL):
        box = _union_box(region, obj.box)
        p, fg = _protocol_click(obj.full, s.truth, box, 'deepgrow3d', 2, rng)
        obj.apply(sess.click('deepgrow3d', foreground=[p] if fg else (), background=() if fg else [p], object_id='x'))
        m = obj.full.astype(bool)
        a.append(dice(m, s.truth))
        if m.sum() > 20:
            sess.extreme_points('dextr3d', extreme_points(m).tolist(), object_id='y')
            y = sess.mask('y').astype(bool)
            bb.append(dice(y, s.truth)); cc.append(dice(y | m, s.truth) if False else dice(((y.astype(int) + m) >= 1) & (y | m), s.truth))
        else:
            bb.append(a[-1]); cc.append(a[-1])
    sess.close(); A.append(a); B.append(bb)
    if os.environ.get('V'): print(f"{s.case[:18]:18s} {s.name[:14]:14s} dg " + ' '.join(f"{v:.2f}" for v in a) + ' | dextr ' + ' '.join(f"{v:.2f}" for v in bb), flush=True)
print('dg3d ', ' '.join(f"{v:.3f}" for v in np.mean(A, 0)))
print('dextr', ' '.join(f"{v:.3f}" for v in np.mean(B, 0)))
