"""Calibration toward a reference image that keeps the source's tissue fractions (probe).

A reference's brain histogram is one head's: it carries that head's tissue proportions as well as its scanner.
Here the reference's histogram is re-weighted, bin by bin, to the tissue fractions of the image being calibrated:
a 3-class Gaussian mixture is fitted to each histogram (CSF, grey, white matter; dark to bright), and each bin of
the reference's histogram is scaled by ``sum_k resp_k(bin) * frac_k(source) / frac_k(reference)``, where
``resp_k`` is the reference mixture's posterior of class k at the bin. The histogram keeps the reference's own
shape inside each class (not a parametric mixture: that version lost, RESULTS "A reference image from a site the
model never saw"); only the classes' weights change. With equal fractions it is the reference's histogram.

For every left-out site (pairs of quality_reference_loso.py: 8 heads x 3 sources x 2 references) it scores SSIM to
the same head at the left-out site of:

- ``hm_plain_w`` / ``hm_tissue_w``: the input quantile-mapped onto the reference's histogram / the re-weighted one
  (fractions of the input), blended with weight ``w``;
- with ``--bundles``: ``hcld_plain_w`` / ``hcld_tissue_w``: the harmonizer toward the reference without its
  histogram calibration (``raw``), then calibrated onto the reference's histogram / the re-weighted one (fractions
  of ``raw``) with weight ``w``. ``hcld_plain_0.5`` is the shipped default.

    PYTHONPATH=$PWD python benchmarks/results/reference_rule/probes/tissue_reweight.py VAL_PACK OUT.tsv \
        [--bundles siteA=BUNDLE_NO_A siteB=BUNDLE_NO_B ...] [--left-out siteB ...]
    ... tissue_reweight.py VAL_PACK OUT.tsv --sites BUNDLE      # site targets instead of references
    ... tissue_reweight.py VAL_PACK - --stability                # each head's fractions at each site
    ... tissue_reweight.py --summarize ROWS.tsv                   # the printed table of committed rows
"""
import argparse
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, "benchmarks")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sweep import calibrated_ssims, cell  # noqa: E402
from quality_reference_loso import reference_pairs  # noqa: E402
from quality_simulated import brain_ssim, load_inputs, write_tsv  # noqa: E402

from hcld_bids.model.harmonize import brain_histogram  # noqa: E402

WEIGHTS = (0.5, 0.75, 1.0)


def _mixture(edges, density, n=20000):
    """3-class Gaussian mixture of a histogram (fitted to ``n`` evenly spaced quantiles of it), classes dark to
    bright: ``(model, order)``."""
    from sklearn.mixture import GaussianMixture

    cdf = np.concatenate([[0.0], np.cumsum(density * np.diff(edges))])
    cdf /= cdf[-1]
    v = np.interp((np.arange(n) + 0.5) / n, cdf, edges).reshape(-1, 1)
    g = GaussianMixture(3, random_state=0, means_init=np.quantile(v, [0.1, 0.45, 0.85]).reshape(-1, 1)).fit(v)
    return g, np.argsort(g.means_.ravel())


def tissue_reweighted(ref_hist, source_hist):
    """The reference's ``(edges, density)`` with its classes re-weighted to the source histogram's fractions."""
    edges, density = ref_hist
    g_ref, o_ref = _mixture(edges, density)
    g_src, o_src = _mixture(*source_hist)
    centers = 0.5 * (edges[1:] + edges[:-1])
    resp = g_ref.predict_proba(centers.reshape(-1, 1))[:, o_ref]
    scale = resp @ (g_src.weights_[o_src] / g_ref.weights_[o_ref])
    return edges, density * scale, g_ref.weights_[o_ref], g_src.weights_[o_src]


def score(row, prefix, img, mask, target_hist, truth, truth_mask):
    """Add to ``row`` the CSF fraction of ``img`` (``csf_<prefix>``) and the SSIM of ``img`` calibrated onto the
    target's plain histogram and onto it re-weighted to ``img``'s fractions, with each weight
    (``<prefix>_plain_<w>``, ``<prefix>_tissue_<w>``); returns the reference's fractions."""
    e, d, f_target, f_img = tissue_reweighted(target_hist, brain_histogram(img, mask))
    row[f"csf_{prefix}"] = f_img[0]
    for name, hist in (("plain", target_hist), ("tissue", (e, d))):
        scores = calibrated_ssims(img, mask, hist, WEIGHTS, truth, truth_mask)
        row.update({f"{prefix}_{name}_{w:g}": v for w, v in scores.items()})
    return f_target


def site_rows(images, bundle):
    """Site targets: every head at every source site toward each other site's stored histogram (``left`` is the
    target site); ``hm_*`` on the input, ``hcld_*`` on the harmonizer's output without its calibration."""
    from hcld_bids.model.bundle import load_bundle
    from hcld_bids.model.harmonize import Harmonizer

    harm = Harmonizer(load_bundle(bundle))
    rows, t0 = [], time.perf_counter()
    for sub in sorted(images):
        for site in sorted(images[sub]):
            inp, mask = images[sub][site]
            for target in sorted(images[sub]):
                if target == site:
                    continue
                truth, truth_mask = images[sub][target]
                style = harm.style_from_site(target)
                row = {"left": target, "pair": f"{sub}:{site}:{target}",
                       "input": brain_ssim(inp, truth, truth_mask, mask)}
                raw = harm.harmonize(inp, style, mask=mask, regime=replace(harm.default_regime, calibrate=False))
                for prefix, img in (("hm", inp), ("hcld", raw)):
                    score(row, prefix, img, mask, style.histogram, truth, truth_mask)
                rows.append(row)
                if len(rows) % 12 == 0:
                    print(f"  {len(rows)} pairs, {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def stability(images):
    """CSF / GM / WM fractions of every head at every site, three ways: the histogram mixture used above, a
    3-class Gaussian mixture of the voxels (probes/_sweep.py), and ANTs Atropos (k-means start, MRF 0.2). Does
    one image tell a head's tissue proportions apart from its scanner's?"""
    import ants
    from _sweep import tissue_mixture

    def atropos(vol, mask):
        img = ants.from_numpy(vol.astype(np.float32), spacing=(2.0, 2.0, 2.0))
        msk = ants.from_numpy(mask.astype(np.float32), spacing=(2.0, 2.0, 2.0))
        seg = ants.atropos(a=img, x=msk, i="kmeans[3]", m="[0.2,1x1x1]", c="[5,0]", verbose=0)
        return np.bincount(seg["segmentation"].numpy()[mask].astype(int), minlength=4)[1:] / mask.sum()

    ways = {"histogram mixture": lambda v, m: tissue_reweighted(brain_histogram(v, m), brain_histogram(v, m))[3],
            "voxel mixture": lambda v, m: tissue_mixture(v, m)[1], "Atropos": atropos}
    sites = sorted({s for sub in images for s in images[sub]})
    for name, fn in ways.items():
        print(f"\n{name}: CSF fraction (GM, WM) per head and site")
        print(f"{'head':8s} " + " ".join(f"{s:>17s}" for s in sites))
        for sub in sorted(images):
            fr = [fn(*images[sub][s]) for s in sites]
            print(f"{sub:8s} " + " ".join(f"{f[0]:.3f} ({f[1]:.2f} {f[2]:.2f})" for f in fr), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pack")
    ap.add_argument("out")
    ap.add_argument("--bundles", nargs="*", default=[], help="LEFT_OUT=BUNDLE without that site")
    ap.add_argument("--left-out", nargs="*", default=["siteA", "siteB", "siteC", "siteD"])
    ap.add_argument("--sites", default=None, help="BUNDLE: score site targets (every head, every site pair) instead")
    ap.add_argument("--stability", action="store_true",
                    help="print each head's tissue fractions at each site instead (``out`` unused)")
    if sys.argv[1:2] == ["--summarize"]:  # the printed table of a run's rows
        rows = [{k: (v if k in ("left", "pair") else float(v)) for k, v in r.items()}
                for r in csv.DictReader(open(sys.argv[2]), delimiter="\t")]
        return summarize(rows, sorted({r["left"] for r in rows}))
    a = ap.parse_args()
    images = load_inputs(a.pack)
    if a.stability:
        return stability(images)
    bundles = dict(b.split("=", 1) for b in a.bundles)
    rows, t0 = [], time.perf_counter()
    if a.sites:
        rows = site_rows(images, a.sites)
        a.left_out = sorted({r["left"] for r in rows})
    for left in ([] if a.sites else a.left_out):
        harm = None
        if left in bundles:
            from hcld_bids.model.bundle import load_bundle
            from hcld_bids.model.harmonize import Harmonizer

            harm = Harmonizer(load_bundle(bundles[left]))
            assert left not in harm.bundle.prototypes
        for sub, site, ref_sub in reference_pairs(images, left, 2):
            inp, mask = images[sub][site]
            truth, truth_mask = images[sub][left]
            ref, ref_mask = images[ref_sub][left]
            ref_hist = brain_histogram(ref, ref_mask)
            row = {"left": left, "pair": f"{sub}:{site}:{ref_sub}", "input": brain_ssim(inp, truth, truth_mask, mask)}
            row["csf_ref"] = score(row, "hm", inp, mask, ref_hist, truth, truth_mask)[0]
            if harm is not None:
                raw = harm.harmonize(inp, harm.style_from_volume(ref), mask=mask,
                                     regime=replace(harm.default_regime, calibrate=False))
                score(row, "hcld", raw, mask, ref_hist, truth, truth_mask)
            rows.append(row)
            if len(rows) % 12 == 0:
                print(f"  {len(rows)} pairs, {time.perf_counter() - t0:.0f} s", flush=True)
    write_tsv(Path(a.out), rows)
    summarize(rows, a.left_out)


def summarize(rows, lefts):
    """Mean SSIM / pairs worse than the input / worst change of each method, per left-out (or target) site."""
    methods = [k for k in rows[0] if k.startswith(("hm_", "hcld_"))]
    print(f"{'method':18s} " + "  ".join(f"{s:>22s}" for s in [*lefts, "ALL"]) + "   (mean SSIM / worse / worst)")
    for m in ["input", *methods]:
        cells = []
        for s in [*lefts, "ALL"]:
            sel = [r for r in rows if s in ("ALL", r["left"])]
            cells.append(cell([r[m] for r in sel], [r["input"] for r in sel]))
        print(f"{m:18s} " + "  ".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
