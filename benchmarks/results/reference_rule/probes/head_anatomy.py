"""Are the heads behind the remaining losing reference pairs (IXI280, IXI274) unusual in anatomy? Tissue
fractions of each held-out head from a 3-class Gaussian mixture of its brain intensities at the clean siteA,
and each head's siteA brain-histogram W1 to the mean of the other heads' (how far its anatomy sits from the
crowd, with the scanner held fixed).

    PYTHONPATH=$PWD python benchmarks/results/reference_rule/probes/head_anatomy.py VAL_PACK TEST_PACK
"""
import sys
import numpy as np
sys.path.insert(0, "benchmarks")
from quality_simulated import load_inputs
from sklearn.mixture import GaussianMixture
from hcld_bids.model.harmonize import brain_histogram
from hcld_bids.reports.metrics import wasserstein_1d

rows = []
for pack in sys.argv[1:]:
    images = load_inputs(pack)
    for sub in sorted(images):
        vol, mask = images[sub]["siteA"]
        v = vol[mask > 0].reshape(-1, 1).astype(np.float64)
        g = GaussianMixture(3, random_state=0, means_init=np.quantile(v, [0.1, 0.45, 0.85]).reshape(-1, 1)).fit(v[::4])
        order = np.argsort(g.means_.ravel())
        frac = np.bincount(g.predict(v), minlength=3)[order] / len(v)
        edges, h = brain_histogram(vol, mask)
        rows.append((pack.rstrip("/").split("/")[-1], sub, int(mask.sum()), frac, h))
edges = np.linspace(0, 1, len(rows[0][4]) + 1)
print(f"{'pack':10s} {'head':7s} {'brain vox':>9s}  CSF    GM     WM    W1 to the others' mean (siteA)")
for i, (pack, sub, n, frac, h) in enumerate(rows):
    others = np.mean([r[4] for j, r in enumerate(rows) if j != i], axis=0)
    print(f"{pack:10s} {sub:7s} {n:9d}  {frac[0]:.3f}  {frac[1]:.3f}  {frac[2]:.3f}  {wasserstein_1d(h, others, edges):.4f}")
