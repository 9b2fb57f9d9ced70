"""Probe (validation heads): a bundle's default regime with its calibration at weights 1 / 0.9 / 0.75 / 0.5 toward
the site prototypes; the 3,600-step state against the shipped model.

    PYTHONPATH=$PWD python benchmarks/results/state_3600_val/probe.py BUNDLE VAL_INPUTS
"""
import sys, time, itertools
from pathlib import Path
import numpy as np, torch
REPO = Path(__file__).resolve().parents[3]; sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO/'benchmarks'))
from quality_simulated import load_inputs, image_metrics
from hcld_bids.model.bundle import load_bundle
from hcld_bids.model.harmonize import Harmonizer, match_histogram
from dataclasses import replace
torch.set_num_threads(1)
images = load_inputs(Path(sys.argv[2]))
h = Harmonizer(load_bundle(sys.argv[1], device='cpu'), device='cpu')
reg = replace(h.default_regime, calibrate=False)
print(h.default_regime.to_dict(), flush=True)
subs = sorted(images); sites = sorted(images[subs[0]])
scores = {}; t0 = time.time()
for target in sites:
    st = h.style_from_site(target)
    for sub in subs:
        tgt, tmask = images[sub][target]
        for source in sites:
            if source == target: continue
            inp, mask = images[sub][source]
            u = h.harmonize(inp, st, regime=reg, mask=mask)
            full = match_histogram(u, mask, *st.histogram)
            outs = {'input': inp, 'uncal': u, 'lam1': full}
            for lam in (0.5, 0.75, 0.9): outs[f'lam{lam}'] = (1-lam)*u + lam*full
            for k, o in outs.items():
                o = np.where(mask, o, 0)
                m = image_metrics(o, tgt, tmask, inp, mask, {'edges': st.histogram[0], 'density': st.histogram[1]})
                scores.setdefault(k, []).append((m['ssim'], m['w1_same_head'], m['w1_site'], m['structure_preservation']))
    print(target, time.time()-t0, flush=True)
for k, v in scores.items():
    v = np.array(v); print(f'{k:8s} ssim {v[:,0].mean():.4f} w1_same {v[:,1].mean():.4f} w1_site {v[:,2].mean():.4f} struct {v[:,3].mean():.4f}')
