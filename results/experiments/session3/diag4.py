import os, json, numpy as np, torch
torch.set_num_threads(1)
import claraseg.engine.runners as R
from claraseg.engine.backend import LocalBackend
from claraseg.engine.masks import BoxMask
from claraseg.evaluate.heldout import heldout_structures, heldout_record
from claraseg.evaluate.runner import resolve_model
from claraseg.evaluate.protocol import _protocol_click, _nonzero_box, dice
PH = int(os.environ.get('PH', 0))
cap = []
of = R.forward
def fwd(*a, **k):
    p = of(*a, **k); cap.append(p.clone()); return p
R.forward = fwd
b = LocalBackend(); reg = b.registry
bd = reg.get('deepgrow3d'); net = reg.network('deepgrow3d', b.device)
d = resolve_model(b, 'deepgrow3d')
SC = [1.5, 2.0, 2.8, 4.0, 5.6]
S = [s for s in heldout_structures(heldout_record(d), '/work/shared/data') if PH or not s.case.startswith('phantom')]
out = []
for s in S:
    sess = b.open_session(s.image); vol = sess._volume(bd)
    rng = np.random.default_rng(42)
    empty = np.zeros_like(s.truth, np.uint8)
    p, fg = _protocol_click(empty, s.truth, _nonzero_box(s.truth), 'deepgrow3d', 2, rng)
    rec = {'name': f"{s.case}:{s.name}", 'voxels': int(s.truth.sum()), 'scales': []}
    masks = []
    for sc in SC:
        st = dict(bd.settings); st['first_click_spacing_mm'] = sc; st['grow_passes'] = 0
        cap.clear()
        start, crop = R.run_deepgrow(net, 'deepgrow3d', st, vol, BoxMask(sess._size), np.array([p]), np.zeros((0, 3), np.int64), b.device, new_clicks=(np.array([p]), np.zeros((0,3))))
        full = np.zeros_like(s.truth, bool)
        if crop.size:
            full[tuple(slice(a, a + n) for a, n in zip(start[::-1], crop.shape))] = crop > 0
        prob = cap[-1].numpy(); bin_ = prob > 0.5
        from scipy import ndimage
        nz = np.argwhere(bin_)
        ext = ((nz.max(0) - nz.min(0) + 1).max() / 64.0) if len(nz) else 0.0
        touch = bool(len(nz) and (nz.min() == 0 or nz.max() == 63))
        band = (prob > 0.1) & (prob < 0.9)
        conf = float(np.abs(prob[bin_] - 0.5).mean()) if bin_.any() else 0.0
        rec['scales'].append({'s': sc, 'dice': dice(full, s.truth), 'v': float(full.sum() / s.truth.sum()),
                              'ext': float(ext), 'touch': touch, 'conf': conf,
                              'band_ratio': float(band.sum() / max(1, bin_.sum())), 'meanp_in': float(prob[bin_].mean()) if bin_.any() else 0.0})
        masks.append(full)
    rec['pair_dice'] = [dice(masks[i], masks[i + 1]) for i in range(len(SC) - 1)]
    sess.close()
    out.append(rec)
    print(rec['name'][:30], ' '.join(f"{x['s']}:{x['dice']:.2f}/e{x['ext']:.2f}/b{x['band_ratio']:.2f}/c{x['conf']:.2f}{'T' if x['touch'] else ''}" for x in rec['scales']), 'pair', ' '.join(f"{v:.2f}" for v in rec['pair_dice']), flush=True)
json.dump(out, open(os.environ.get('OUT', '/tmp/exp/scales.json'), 'w'))
