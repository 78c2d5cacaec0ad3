"""After each DG3D click, refine the 3D mask slice by slice with DG2D (pseudo click = max-EDT of each slice)."""
import os, time, numpy as np, torch
from scipy import ndimage
torch.set_num_threads(1)
from claraseg.engine.backend import LocalBackend
from claraseg.engine.masks import BoxMask
from claraseg.engine.runners import run_deepgrow
from claraseg.evaluate.heldout import heldout_structures, heldout_record
from claraseg.evaluate.runner import resolve_model
from claraseg.evaluate.protocol import _protocol_click, _ObjectMask, _nonzero_box, _union_box, dice
NCL = int(os.environ.get('NCL', 5)); AXES = [int(a) for a in os.environ.get('AXES', '2').split(',')]
FEED = int(os.environ.get('FEED', 0)); PH = int(os.environ.get('PH', 0))
b = LocalBackend()
reg = b.registry
b2 = reg.get('deepgrow2d'); net2 = reg.network('deepgrow2d', b.device)
s2 = dict(b2.settings)
if os.environ.get('TTA'): s2['tta_flips'] = int(os.environ['TTA'])
d = resolve_model(b, 'deepgrow3d')

def refine2d(sess, full, fg_all, bg_all, axis):
    vol = sess._volume(b2)
    out = np.zeros_like(full)
    arr_axis = 2 - axis
    idxs = np.nonzero(full.any(axis=tuple(a for a in range(3) if a != arr_axis)))[0]
    if len(idxs) == 0: return full
    bm = BoxMask(full.shape[::-1], np.zeros(3, np.int64), full.copy())
    for idx in idxs:
        sl = np.take(full, idx, axis=arr_axis)
        if sl.sum() < 3:
            continue
        e = ndimage.distance_transform_edt(np.pad(sl, 1))[1:-1, 1:-1]
        pk = np.unravel_index(np.argmax(e), e.shape)  # 2D indices in array order, skipping arr_axis
        kji = list(pk); kji.insert(arr_axis, idx); ijk = np.array(kji[::-1])[None]
        fg = np.concatenate([ijk, fg_all[fg_all[:, axis] == idx]]) if len(fg_all) else ijk
        bg = bg_all[bg_all[:, axis] == idx] if len(bg_all) else np.zeros((0, 3), np.int64)
        st, cr = run_deepgrow(net2, 'deepgrow2d', s2, vol, bm, fg, bg, b.device, axis, int(idx), (fg, bg))
        if cr.size:
            region = tuple(slice(a, a + n) for a, n in zip(st[::-1], cr.shape))
            out[region] |= cr
    return out

S = [s for s in heldout_structures(heldout_record(d), '/work/shared/data') if PH or not s.case.startswith('phantom')]
R3, R2 = [], []; T = []
for s in S:
    sess = b.open_session(s.image)
    rng = np.random.default_rng(42)
    obj = _ObjectMask(s.truth.shape); region = _nonzero_box(s.truth)
    fgs, bgs = [], []
    d3, d2 = [], []
    for n in range(NCL):
        box = _union_box(region, obj.box)
        p, fg = _protocol_click(obj.full, s.truth, box, 'deepgrow3d', 2, rng)
        (fgs if fg else bgs).append(p)
        delta = sess.click('deepgrow3d', foreground=[p] if fg else (), background=() if fg else [p], object_id='x')
        obj.apply(delta)
        d3.append(dice(obj.full.astype(bool), s.truth))
        t0 = time.time()
        FG = np.array(fgs, np.int64).reshape(-1, 3); BG = np.array(bgs, np.int64).reshape(-1, 3)
        votes = sum(refine2d(sess, obj.full, FG, BG, a).astype(np.int32) for a in AXES)
        ref = votes * 2 > len(AXES)
        T.append(time.time() - t0)
        d2.append(dice(ref, s.truth))
    sess.close()
    R3.append(d3); R2.append(d2)
    print(f"{s.case[:18]:18s} {s.name[:14]:14s} 3D " + ' '.join(f"{v:.2f}" for v in d3) + " | 2Dref " + ' '.join(f"{v:.2f}" for v in d2), flush=True)
print('3D   ', ' '.join(f"{v:.3f}" for v in np.mean(R3, 0)))
print('2Dref', ' '.join(f"{v:.3f}" for v in np.mean(R2, 0)), 'median s', np.median(T))
