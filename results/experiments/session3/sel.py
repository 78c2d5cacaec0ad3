import json, numpy as np
R = json.load(open('/tmp/exp/scales.json'))
def ev(rule, name):
    real, ph = [], []
    for r in R:
        sc = r['scales']; i = rule(r)
        (ph if r['name'].startswith('phantom') else real).append(sc[i]['dice'])
    print(f"{name:28s} real {np.mean(real):.3f} phantom {np.mean(ph):.3f}")
for k in range(5): ev(lambda r, k=k: k, f"fixed {R[0]['scales'][k]['s']}")
ev(lambda r: int(np.argmax([x['dice'] for x in r['scales']])), 'oracle')
ev(lambda r: int(np.argmax([x['conf'] for x in r['scales']])), 'max conf')
ev(lambda r: int(np.argmin([x['band_ratio'] if x['v'] > 0 else 99 for x in r['scales']])), 'min band')
ev(lambda r: int(np.argmin([x['band_ratio'] if x['v'] > 0 else 99 for x in r['scales'][:4]])), 'min band <=4')
ev(lambda r: int(np.argmax([x['conf'] for x in r['scales'][:4]])), 'max conf <=4')
ev(lambda r: int(np.argmax([x['conf'] for x in r['scales'][:3]])), 'max conf <=2.8')
ev(lambda r: int(np.argmin([x['band_ratio'] if x['v'] > 0 else 99 for x in r['scales'][:3]])), 'min band <=2.8')
