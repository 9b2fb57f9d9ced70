"""Site classifier of quality_simulated.py on the histogram-matched test heads (HCLD's outputs carry the same
calibrated histograms), its features as they are and rounded to 4 and 3 decimals, on the old and the new
preprocessing. Run from the repository root with PYTHONPATH=$PWD:benchmarks."""
import numpy as np, quality_simulated as qs
from pathlib import Path
from hcld_bids.model.bundle import load_bundle
b = load_bundle(Path('hcld_bids/data/models/demo'))
subs = 'IXI614 IXI524 IXI396 IXI363 IXI296 IXI274 IXI096 IXI092'.split(); sites = ['siteA','siteB','siteC','siteD']
for inputs in ['/work/data/work-heldout/train/inputs', '/work/data/work-heldout2/train/inputs']:
    im = qs.load_inputs(Path(inputs)); res = {}
    for t in sites:
        h = b.manifest['sites'][t]['intensity_histogram']
        X, y, g = [], [], []
        for s in subs:
            for src in sites:
                v, m = im[s][src]
                X.append(qs.classifier_features(qs.histogram_match(v, m, h['edges'], h['density']), m)); y.append(src); g.append(s)
        X = np.array(X)
        for dec in (None, 4, 3):
            Xr = X if dec is None else np.round(X, dec)
            res.setdefault(dec, []).append(qs.site_classifier_accuracy(Xr + 0.0, y, g))
    print(inputs.split('/')[3], {k: (round(float(np.mean(v)), 3), [round(x, 2) for x in v]) for k, v in res.items()})
