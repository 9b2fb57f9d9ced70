"""A target scanner known from a few scans (probe): how far should the histogram calibration go?

``hcld-bids train --add-site-prototypes`` turns scans of a new scanner into a site: a prototype (the mean
latent), the mean brain histogram and the mean spectrum, with ``n_images``. Toward such a site the
calibration is full, as toward a trained site of 33 heads, while toward one reference image it is half-way
(``reference_calibration`` 0.5), because one head's histogram carries its anatomy as well as its scanner. The
spectral calibration already shrinks with the number of heads (``Regime.spectrum_exponent``); this probe asks
whether the histogram's should too.

For every left-out site (the leave-one-site-out bundles of RESULTS), every validation head and source site,
and k = 1, 2, 4: a site made of the left-out site's scans of the next k heads (cyclically; never the head
itself), as ``--add-site-prototypes`` makes it; the harmonizer toward that site without its histogram
calibration, then calibrated onto the site's histogram with each weight of ``WEIGHTS``. SSIM to the same head
at the left-out site; the input's for comparison.

    PYTHONPATH=$PWD python benchmarks/results/reference_rule/probes/few_scan_site.py VAL_PACK OUT.tsv \
        siteA=BUNDLE_NO_A siteB=BUNDLE_NO_B ... [--detail GAIN] [--ks 1 2]
    PYTHONPATH=$PWD python benchmarks/results/reference_rule/probes/few_scan_site.py --summarize OUT.tsv ...
"""
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, "benchmarks")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sweep import calibrated_ssims, cell  # noqa: E402
from quality_simulated import brain_ssim, load_inputs, write_tsv  # noqa: E402

from hcld_bids.model.bundle import load_bundle  # noqa: E402
from hcld_bids.model.harmonize import Harmonizer, Style  # noqa: E402
from hcld_bids.model.prototypes import compute_site_prototype  # noqa: E402
from hcld_bids.model.spectrum import site_spectra  # noqa: E402
from hcld_bids.reports.metrics import site_histograms  # noqa: E402

WEIGHTS = (0.5, 0.75, 0.875, 1.0)
KS = (1, 2, 4)


def few_scan_style(harm, vols, masks, label):
    proto = compute_site_prototype(harm.bundle.autoencoder, vols, harm.bundle.scale_factor)
    hist = site_histograms(vols, masks, [label] * len(vols))[label]
    spectrum = site_spectra(vols, masks, [label] * len(vols))[label]
    return Style(latent=proto.latent, channel_mean=proto.channel_mean.flatten(),
                 channel_std=proto.channel_std.flatten(), source=f"site:{label}",
                 histogram=(np.asarray(hist["edges"], float), np.asarray(hist["density"], float)),
                 spectrum=np.asarray(spectrum, float), images=len(vols))


def main():
    if sys.argv[1] == "--summarize":  # the printed table of several runs' rows
        rows = []
        for path in sys.argv[2:]:
            rows += [{**r, "k": int(r["k"]), **{k: float(v) for k, v in r.items() if k == "input" or k.startswith("cal_")}}
                     for r in csv.DictReader(open(path), delimiter="\t")]
        return summarize(rows)
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("pack")
    ap.add_argument("out")
    ap.add_argument("bundles", nargs="+", help="LEFT_OUT=BUNDLE without that site")
    ap.add_argument("--detail", type=float, default=None,
                    help="the detail gain toward the few-scan site (default: the regime's gain toward trained sites)")
    ap.add_argument("--ks", type=int, nargs="+", default=list(KS))
    a = ap.parse_args()
    images = load_inputs(a.pack)
    rows, t0 = [], time.perf_counter()
    for left, bundle in (b.split("=", 1) for b in a.bundles):
        harm = Harmonizer(load_bundle(bundle))
        assert left not in harm.bundle.prototypes
        regime = replace(harm.default_regime, calibrate=False, reference_detail=a.detail)
        subjects = sorted(s for s in images if left in images[s])
        for k in a.ks:
            for i, sub in enumerate(subjects):
                refs = [subjects[(i + j) % len(subjects)] for j in range(1, k + 1)]
                style = few_scan_style(harm, [images[r][left][0] for r in refs], [images[r][left][1] for r in refs],
                                       f"new{left}")
                truth, truth_mask = images[sub][left]
                for site in sorted(images[sub]):
                    if site == left:
                        continue
                    inp, mask = images[sub][site]
                    raw = harm.harmonize(inp, style, mask=mask, regime=regime)
                    row = {"left": left, "k": k, "pair": f"{sub}:{site}:{'+'.join(refs)}",
                           "input": brain_ssim(inp, truth, truth_mask, mask)}
                    scores = calibrated_ssims(raw, mask, style.histogram, WEIGHTS, truth, truth_mask)
                    row.update({f"cal_{w:g}": v for w, v in scores.items()})
                    rows.append(row)
                print(f"  {left} k={k} {sub}: {len(rows)} rows, {time.perf_counter() - t0:.0f} s", flush=True)
    write_tsv(Path(a.out), rows)
    summarize(rows)


def summarize(rows):
    """Mean SSIM / pairs worse than the input / worst change, per k and weight (and the rule 1 - 0.5 / k)."""
    lefts = sorted({r["left"] for r in rows})
    ks = sorted({r["k"] for r in rows})
    print(f"{'k':>2s} {'weight':>8s} " + "  ".join(f"{s:>22s}" for s in [*lefts, "ALL"]))
    for k in ks:
        for w in [*WEIGHTS, "rule"]:
            cells = []
            for s in [*lefts, "ALL"]:
                sel = [r for r in rows if r["k"] == k and s in ("ALL", r["left"])]
                if not sel:
                    continue
                key = f"cal_{1 - 0.5 / k:g}" if w == "rule" else f"cal_{w:g}"
                cells.append(cell([r[key] for r in sel], [r["input"] for r in sel]))
            print(f"{k:2d} {w!s:>8s} " + "  ".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
