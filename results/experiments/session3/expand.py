import os, sys, numpy as np, torch
torch.set_num_threads(1)
import claraseg.engine.runners as R
from claraseg.engine.backend import LocalBackend
from claraseg.evaluate.heldout import evaluate_heldout
D = float(os.environ['DVOX'])
orig = R.extreme_points
def ext(mask):
    p = orig(mask).astype(np.float64)
    for a in range(6):
        p[a, a // 2] += (-D if a % 2 == 0 else D)
    return p
R.extreme_points = ext
b = LocalBackend(idle_timeout=None)
s = evaluate_heldout(b, ['deepgrow3d'], '/work/shared/data', f'/tmp/exp/out_exp{D}', method=None, interactions=5, progress=False)
print('DVOX', D, s['deepgrow3d']['summary']['mean_dice_at'])
