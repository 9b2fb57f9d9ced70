"""Per-image source spectrum (what a product can compute) on the histmatch and HCLD bases."""
import sys, csv, itertools
from pathlib import Path
import numpy as np
sys.path.insert(0, '/work/main/benchmarks'); sys.path.insert(0, '/work/main')
import quality_simulated as qs
from hcld_bids.reports import metrics
import nibabel as nib

NB = int(sys.argv[1]) if len(sys.argv) > 1 else 6
EXPS = [float(a) for a in sys.argv[2].split(',')] if len(sys.argv) > 2 else [1.0]
EVAL = sys.argv[3].split(',') if len(sys.argv) > 3 else ['IXI633', 'IXI168', 'IXI632', 'IXI216']
SITES = ['siteA', 'siteB', 'siteC', 'siteD']
held = qs.load_inputs(Path('/work/data/work-heldout/train/inputs'))
shape = next(iter(held.values()))['siteA'][0].shape
fr = [np.abs(np.fft.fftfreq(shape[0])), np.abs(np.fft.fftfreq(shape[1])), np.fft.rfftfreq(shape[2])]
bins = [np.minimum((f / 0.5 * NB).astype(int), NB - 1) for f in fr]
IDX = (bins[0][:, None, None] * NB * NB + bins[1][None, :, None] * NB + bins[2][None, None, :]).ravel()
NBIN = NB ** 3
F = lambda v, m: np.fft.rfftn(v * m)
power = lambda X: np.bincount(IDX, (np.abs(X) ** 2).ravel(), minlength=NBIN)
def apply(v, m, H):
    X = F(v, m)
    out = np.fft.irfftn(X * H[IDX].reshape(X.shape), s=v.shape).astype(np.float32)
    out[~m] = 0
    return out
site_of = {r['participant_id'][4:]: r['site'] for r in csv.DictReader(open('/work/data/ixi/train/participants.tsv'), delimiter='\t')}
train = {}
for p in sorted(Path('/work/data/work-train/train/inputs').glob('*_t1w.nii.gz')):
    sub = p.name.split('_')[0][4:]
    m = np.asarray(nib.load(str(p).replace('_t1w', '_mask')).dataobj) > 0
    train.setdefault(site_of[sub], []).append((np.asarray(nib.load(p).dataobj, np.float32), m))
edges = metrics.histogram_edges()
hist = {s: {'edges': edges, 'density': np.mean([metrics.brain_histogram(v, m)[1] for v, m in L], axis=0)} for s, L in train.items()}
PT = {s: np.mean([power(F(qs.histogram_match(v, m, edges, hist[s]['density']), m)) for v, m in L], axis=0) for s, L in train.items()}
cache = Path('/work/scratch/spec/cache_ship')
rows = []
for sub in EVAL:
    for s, t in itertools.product(SITES, SITES):
        if s == t: continue
        v, m = held[sub][s]; ref, rm = held[sub][t]
        cal = lambda o: qs.histogram_match(o, m, edges, hist[t]['density'])
        def score(o, k=None):
            d = qs.image_metrics(o, ref, rm, v, m, hist[t])
            if k: r[k + '_sp'] = d['structure_preservation']
            return d['ssim']
        bases = {'hm': cal(v), 'hcld': np.load(cache / f'{sub}_{s}_to_{t}_dual_inv10_samp10.npy')}
        r = {'sub': sub, 's': s, 't': t}
        for bn, b in bases.items():
            r[bn] = score(b, bn)
            ratio = np.sqrt(PT[t] / np.maximum(power(F(b, m)), 1e-9))
            for a in EXPS:
                r[f'{bn}_r{a}'] = score(cal(apply(b, m, ratio ** a)), f'{bn}_r{a}')
        rows.append(r)
        print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()}, flush=True)
keys = [k for k in rows[0] if k not in ('sub', 's', 't')]
print('MEAN', {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys})
for s in SITES:
    print('from', s, {k: round(float(np.mean([r[k] for r in rows if r['s'] == s])), 4) for k in keys})
for t in SITES:
    print('to', t, {k: round(float(np.mean([r[k] for r in rows if r['t'] == t])), 4) for k in keys})
