"""Spectral detail gain: keep the decoded (smooth) output, give the detail the gain per band that makes the
output's band powers the target's (a Wiener-like split: the decoded part is taken as signal)."""
import sys, json, itertools
from pathlib import Path
import numpy as np
sys.path.insert(0, '/work/main/benchmarks'); sys.path.insert(0, '/work/main')
import quality_simulated as qs
from hcld_bids.model.spectrum import band_power, band_index, match_spectrum
SITES = ['siteA', 'siteB', 'siteC', 'siteD']
EVAL = ['IXI633', 'IXI168', 'IXI632', 'IXI216']
GMAX = [float(a) for a in sys.argv[1].split(',')] if len(sys.argv) > 1 else [1.0, 1.5]
m = json.load(open('/work/scratch/spec/bspec/manifest.json'))
held = qs.load_inputs(Path('/work/data/work-heldout/train/inputs'))
cache = Path('/work/scratch/spec/cache_ship')
def filt(v, mask, gain):
    s = np.fft.rfftn(np.where(mask, v, 0.).astype(float)); s *= gain[band_index(v.shape)].reshape(s.shape)
    return np.where(mask, np.fft.irfftn(s, s=v.shape, axes=(0, 1, 2)), 0).astype(np.float32)
rows = []
for sub in EVAL:
    for s, t in itertools.product(SITES, SITES):
        if s == t: continue
        v, mask = held[sub][s]; ref, rm = held[sub][t]
        h = m['sites'][t]['intensity_histogram']; sp = np.array(m['sites'][t]['power_spectrum'])
        hm = lambda x: qs.histogram_match(x, mask, h['edges'], h['density'])
        sc = lambda o: qs.image_metrics(o, ref, rm, v, mask, h)['ssim']
        o = np.load(cache / f'{sub}_{s}_to_{t}_dual_inv10_samp10.npy')   # default output (calibrated)
        a = hm(np.load(cache / f'{sub}_{s}_to_{t}_raw.npy'))              # decoded part, calibrated
        r = np.where(mask, o - a, 0)                                      # the detail, in target units
        r_ = {'hcld': sc(o), 's10': sc(hm(match_spectrum(o, mask, sp, measure=o)))}
        pa, pr = band_power(a, mask), band_power(r, mask)
        for gmax in GMAX:
            g = np.sqrt(np.clip(sp - pa, 0, None) / np.maximum(pr, 1e-12)).clip(0, gmax)
            out = np.where(mask, a + filt(r, mask, g), 0)
            r_[f'g{gmax}'] = sc(hm(out))
            r_[f'g{gmax}_s'] = sc(hm(match_spectrum(out, mask, sp, measure=hm(out))))
        r_.update(sub=sub, s=s, t=t); rows.append(r_)
        print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in r_.items()}, flush=True)
keys = [k for k in rows[0] if k not in ('sub', 's', 't')]
print('MEAN', {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys})
for s in SITES:
    print('from', s, {k: round(float(np.mean([r[k] for r in rows if r['s'] == s])), 4) for k in keys})
for t in SITES:
    print('to', t, {k: round(float(np.mean([r[k] for r in rows if r['t'] == t])), 4) for k in keys})
