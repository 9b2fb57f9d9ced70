"""Are the heads behind the remaining losing reference pairs (IXI280, IXI274) unusual in anatomy? Tissue
fractions of each held-out head from a 3-class Gaussian mixture of its brain intensities at the clean siteA,
and each head's siteA brain-histogram W1 to the mean of the other heads' (how far its anatomy sits from the
crowd, with the scanner held fixed). Given quality_reference_loso.py rows (``pairs.tsv``), each pair's change
over the input against the CSF fraction difference of its reference and source heads (the printed fractions).

    PYTHONPATH=$PWD python benchmarks/results/reference_rule/probes/head_anatomy.py VAL_PACK TEST_PACK \
        benchmarks/results/reference_rule/{detail0875_val_siteB,new_default_test_siteB}/pairs.tsv
"""
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, "benchmarks")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_simulated import load_inputs
from _sweep import tissue_mixture
from hcld_bids.model.harmonize import brain_histogram
from hcld_bids.reports.metrics import wasserstein_1d

packs = [a for a in sys.argv[1:] if not a.endswith(".tsv")]
pair_files = [a for a in sys.argv[1:] if a.endswith(".tsv")]
rows = []
for pack in packs:
    images = load_inputs(pack)
    for sub in sorted(images):
        vol, mask = images[sub]["siteA"]
        frac = tissue_mixture(vol, mask)[1]
        edges, h = brain_histogram(vol, mask)
        rows.append((pack.rstrip("/").split("/")[-1], sub, int(mask.sum()), frac, h))
edges = np.linspace(0, 1, len(rows[0][4]) + 1)
print(f"{'pack':10s} {'head':7s} {'brain vox':>9s}  CSF    GM     WM    W1 to the others' mean (siteA)")
for i, (pack, sub, n, frac, h) in enumerate(rows):
    others = np.mean([r[4] for j, r in enumerate(rows) if j != i], axis=0)
    print(f"{pack:10s} {sub:7s} {n:9d}  {frac[0]:.3f}  {frac[1]:.3f}  {frac[2]:.3f}  {wasserstein_1d(h, others, edges):.4f}")

if pair_files:
    import pandas as pd

    csf = {sub: round(float(frac[0]), 3) for _, sub, _, frac, _ in rows}
    print("\nreference pairs toward siteB, new default: change over the input against the CSF fraction difference "
          "(reference - source head, at siteA)")
    for f in pair_files:
        d = pd.read_csv(f, sep="\t")
        p = d.pivot(index="pair", columns="method", values="ssim")
        p["change"] = p.hcld_ref - p.input
        p["dcsf"] = [csf[r.split(":")[2]] - csf[r.split(":")[0]] for r in p.index]
        big = p.dcsf >= 0.05
        print(f"{f.split('/')[-2]}: corr {np.corrcoef(p.dcsf, p.change)[0, 1]:+.2f}; pairs with dCSF >= 0.05: "
              f"{int(big.sum())}, of them worse {int((p.change[big] < 0).sum())}; pairs with dCSF < 0.05: "
              f"{int((~big).sum())}, of them worse {int((p.change[~big] < 0).sum())}")
        print("  losing pairs:", ", ".join(f"{i} dCSF {p.dcsf[i]:+.3f} change {p.change[i]:+.4f}"
                                          for i in p.index[p.change < 0]))
