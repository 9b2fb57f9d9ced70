"""Probe (as run, 2026-12-07, before the change): the site classifier of quality_simulated.py on the histogram-matched test heads with its features standardized on their own spread (own) or on the unharmonized images of the same target (input_scale), old and new preprocessing. Run from the repository root with PYTHONPATH=$PWD:benchmarks. Printed:
work-heldout {own: 0.336 [0.38, 0.28, 0.38, 0.31], input_scale: 0.297 [0.12, 0.28, 0.41, 0.38], input_own: 0.938, input_input_scale: 0.938}
work-heldout2 {own: 0.398 [0.31, 0.41, 0.38, 0.5], input_scale: 0.266 [0.22, 0.5, 0.16, 0.19], input_own: 0.938, input_input_scale: 0.938}
"""
import numpy as np, quality_simulated as qs
from pathlib import Path
from hcld_bids.model.bundle import load_bundle
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict
b = load_bundle(Path('hcld_bids/data/models/demo'))
subs = 'IXI614 IXI524 IXI396 IXI363 IXI296 IXI274 IXI096 IXI092'.split(); sites = ['siteA','siteB','siteC','siteD']
def acc_scaled(X, y, g, mu, sd):
    Z = (X - mu) / sd
    pred = cross_val_predict(LogisticRegression(C=1.0, max_iter=5000), Z, np.array(y), groups=np.array(g), cv=GroupKFold(8))
    return float(np.mean(pred == np.array(y)))
for inputs in ['/work/data/work-heldout/train/inputs', '/work/data/work-heldout2/train/inputs']:
    im = qs.load_inputs(Path(inputs)); res = {}
    for t in sites:
        h = b.manifest['sites'][t]['intensity_histogram']
        X, XI, y, g = [], [], [], []
        for s in subs:
            for src in sites:
                v, m = im[s][src]
                XI.append(qs.classifier_features(v, m))
                X.append(qs.classifier_features(qs.histogram_match(v, m, h['edges'], h['density']), m)); y.append(src); g.append(s)
        X, XI = np.array(X), np.array(XI)
        mu, sd = XI.mean(0), XI.std(0); sd[sd == 0] = 1.0
        res.setdefault('own', []).append(qs.site_classifier_accuracy(X, y, g))
        res.setdefault('input_scale', []).append(acc_scaled(X, y, g, mu, sd))
        res.setdefault('input_own', []).append(qs.site_classifier_accuracy(XI, y, g))
        res.setdefault('input_input_scale', []).append(acc_scaled(XI, y, g, mu, sd))
    print(inputs.split('/')[3], {k: (round(float(np.mean(v)), 3), [round(x, 2) for x in v]) for k, v in res.items()}, flush=True)
