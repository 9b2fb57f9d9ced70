"""Gain measured on the histogram-matched INPUT (not the output), applied to the HCLD output."""
import sys, json, itertools
from pathlib import Path
import numpy as np
sys.path.insert(0, '/work/main/benchmarks'); sys.path.insert(0, '/work/main')
import quality_simulated as qs
from hcld_bids.model.spectrum import band_power, match_spectrum
SITES = ['siteA', 'siteB', 'siteC', 'siteD']
EVAL = sys.argv[1].split(',') if len(sys.argv) > 1 else ['IXI633', 'IXI168', 'IXI632', 'IXI216']
m = json.load(open('/work/scratch/spec/bspec/manifest.json'))
held = qs.load_inputs(Path('/work/data/work-heldout/train/inputs'))
cache = Path(sys.argv[2] if len(sys.argv) > 2 else '/work/scratch/spec/cache_ship')
rows = []
for sub in EVAL:
    for s, t in itertools.product(SITES, SITES):
        if s == t: continue
        v, mask = held[sub][s]; ref, rm = held[sub][t]
        h = m['sites'][t]['intensity_histogram']; pt = np.array(m['sites'][t]['power_spectrum'])
        hm = lambda x: qs.histogram_match(x, mask, h['edges'], h['density'])
        sc = lambda o: qs.image_metrics(o, ref, rm, v, mask, h)['ssim']
        o = np.load(cache / f'{sub}_{s}_to_{t}_dual_inv10_samp10.npy')
        og = {g: np.load(cache / f'{sub}_{s}_to_{t}_{g}.npy') for g in ('g05', 'g10')}
        r = {'sub': sub, 's': s, 't': t, 'hcld': sc(o)}
        r['own'] = sc(hm(match_spectrum(o, mask, pt, 1.0, measure=o)))
        for a in (1.0, 1.25):
            r[f'input{a}'] = sc(hm(match_spectrum(o, mask, pt, a, measure=hm(v))))
        for g, og_ in og.items():
            r[f'{g}_input1.0'] = sc(hm(match_spectrum(og_, mask, pt, 1.0, measure=hm(v))))
        rows.append(r)
        print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()}, flush=True)
keys = [k for k in rows[0] if k not in ('sub', 's', 't')]
print('MEAN', {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys})
for s in SITES:
    print('from', s, {k: round(float(np.mean([r[k] for r in rows if r['s'] == s])), 4) for k in keys})
for t in SITES:
    print('to', t, {k: round(float(np.mean([r[k] for r in rows if r['t'] == t])), 4) for k in keys})
