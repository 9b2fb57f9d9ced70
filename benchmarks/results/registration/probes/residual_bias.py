import sys, numpy as np, itertools, time
sys.path.insert(0, '/work/main/benchmarks'); sys.path.insert(0, '/work/main')
from pathlib import Path
from scipy import ndimage as ndi
import quality_simulated as qs
from hcld_bids.model.bundle import load_bundle
from hcld_bids.model.harmonize import match_histogram

subs = sys.argv[1].split(',')
cache = Path(sys.argv[2]); method = sys.argv[3]
images = qs.load_inputs(Path('/work/data/work-heldout/train/inputs'))
bundle = load_bundle(Path('/work/main/hcld_bids/data/models/demo'))
sites = ['siteA','siteB','siteC','siteD']

def smooth_norm(x, w, sigma):
    num = ndi.gaussian_filter(x * w, sigma); den = ndi.gaussian_filter(w, sigma)
    return num / np.maximum(den, 1e-6), den

def bias_correct(vol, mask, sigma=8.0, iters=3, classes=(1, 2)):
    v = vol.astype(np.float64).copy(); logf = np.zeros_like(v)
    for _ in range(iters):
        vals = v[mask]
        # 1-D k-means, 3 classes
        c = np.percentile(vals, [15, 50, 85])
        for _ in range(20):
            lab = np.argmin(np.abs(vals[:, None] - c[None]), 1)
            c = np.array([vals[lab == k].mean() for k in range(3)])
        lab = np.argmin(np.abs(vals[:, None] - c[None]), 1)
        w = np.zeros_like(v); r = np.zeros_like(v)
        sel = np.isin(lab, classes) & (vals > 0)
        # down-weight partial-volume voxels far from centre
        idx = np.where(mask)
        ww = np.zeros(vals.shape); ww[sel] = 1.0
        rr = np.zeros(vals.shape); rr[sel] = np.log(vals[sel] / c[lab[sel]])
        w[idx] = ww; r[idx] = rr
        est, _ = smooth_norm(r, w, sigma)
        est[~mask] = 0
        est -= est[mask].mean()
        v = v * np.exp(-est); logf += est
    out = v.astype(np.float32); out[~mask] = 0
    return out

res = {}
for sub in subs:
    for tgt in sites:
        hist = bundle.manifest['sites'][tgt]['intensity_histogram']
        ref, ref_mask = images[sub][tgt]
        for src in sites:
            if src == tgt: continue
            inp, mask = images[sub][src]
            out = np.load(cache / f'{sub}_{src}_to_{tgt}_{method}.npy')
            cands = {'base': out}
            for sig in (6, 10):
                bc = bias_correct(out, mask, sigma=sig)
                cands[f'bc{sig}'] = qs.histogram_match(bc, mask, hist['edges'], hist['density'])
            # oracle: smooth ratio to the answer
            brain = mask & ref_mask & (out > 0.05) & (ref > 0.05)
            lr = np.zeros_like(out, dtype=np.float64); lr[brain] = np.log(out[brain] / ref[brain])
            est, _ = smooth_norm(lr, brain.astype(float), 8.0)
            cands['oracle'] = (out * np.exp(-est)).astype(np.float32) * mask
            hm = qs.histogram_match(inp, mask, hist['edges'], hist['density'])
            cands['hm'] = hm
            cands['hm_bc'] = qs.histogram_match(bias_correct(inp, mask, sigma=8), mask, hist['edges'], hist['density'])
            for k, o in cands.items():
                m = qs.image_metrics(o, ref, ref_mask, inp, mask, hist)
                res.setdefault(k, []).append((src, tgt, m['ssim'], m['structure_preservation']))
        print(sub, tgt, {k: round(np.mean([r[2] for r in v]), 4) for k, v in res.items()}, flush=True)
for k, v in res.items():
    print(k, 'all %.4f' % np.mean([r[2] for r in v]), 'sp %.3f' % np.mean([r[3] for r in v]),
          ' from ', ' '.join('%s:%.3f' % (s, np.mean([r[2] for r in v if r[0] == s])) for s in sites),
          ' to ', ' '.join('%s:%.3f' % (s, np.mean([r[2] for r in v if r[1] == s])) for s in sites))
