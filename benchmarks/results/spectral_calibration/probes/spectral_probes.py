#!/usr/bin/env python
"""Validation probes behind the choices of the spectral calibration (benchmarks/RESULTS.md, "Spectral
calibration"), on the bundle's cached outputs of quality_simulated.py (``--cache``: ``<pair>_dual_inv10_samp10``
for the default regime without spectral calibration, ``<pair>_raw`` for ``--regime raw=dual,...,detail=0,
calibrate=false``, ``<pair>_g05`` / ``<pair>_g10`` for detail 0.5 / 1.0). Every output is histogram-matched onto
the target site's stored histogram before it is scored (SSIM to the same head; quality_simulated.image_metrics).

- ``bands``: the band count per axis and the exponent, gain ``(P_site / P_image) ** (a / 2)`` measured on the
  filtered image itself (the first version), on histogram matching and on the HCLD output; the site spectrum is
  the mean of its training images at that band count (``--train``, ``--train-sites``);
- ``detail-gain``: instead of filtering the whole output, keep the decoded part and give the detail (output minus
  decoded part) the gain per band that makes the band powers the target's, capped at ``--gmax``;
- ``input-gain``: the gain measured on the output (``own``) or on the input mapped onto the target's histogram
  (``input<a>``, exponent ``a``; the shipped choice is ``input1.0``), also on the detail-0.5 / 1.0 outputs.

    PYTHONPATH=$PWD python benchmarks/results/spectral_calibration/probes/spectral_probes.py input-gain \\
        --inputs VAL_INPUTS --bundle BUNDLE_WITH_SPECTRA --cache CACHE [--eval IXI633 IXI168 IXI632 IXI216]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import quality_simulated as qs  # noqa: E402
from spectral_filters import apply_gain, load_train  # noqa: E402

from hcld_bids.model.spectrum import band_power, match_spectrum  # noqa: E402

SITES = ("siteA", "siteB", "siteC", "siteD")


def bands(args, pair, hm, score):
    sub, s, t, v, mask, out = pair
    row = {}
    for name, base in (("hm", hm(v)), ("hcld", out)):
        row[name] = score(base)
        for bins in args.bins:
            ratio = np.sqrt(args.site_power[bins][t] / np.maximum(band_power(base, mask, bins), 1e-12))
            for a in args.exponents:
                gain = ratio ** a
                gain[0] = 1.0
                row[f"{name}_b{bins}_a{a}"] = score(hm(apply_gain(base, mask, gain, bins)))
    return row


def detail_gain(args, pair, hm, score):
    sub, s, t, v, mask, out = pair
    target = np.asarray(args.manifest["sites"][t]["power_spectrum"])
    decoded = hm(np.load(args.cache / f"{sub}_{s}_to_{t}_raw.npy"))
    detail = np.where(mask, out - decoded, 0)
    p_dec, p_det = band_power(decoded, mask), band_power(detail, mask)
    row = {"hcld": score(out), "own": score(hm(match_spectrum(out, mask, target)))}
    for gmax in args.gmax:
        gain = np.sqrt(np.clip(target - p_dec, 0, None) / np.maximum(p_det, 1e-12)).clip(0, gmax)
        row[f"g{gmax}"] = score(hm(np.where(mask, decoded + apply_gain(detail, mask, gain, 8), 0)))
    return row


def input_gain(args, pair, hm, score):
    sub, s, t, v, mask, out = pair
    target = np.asarray(args.manifest["sites"][t]["power_spectrum"])
    matched = hm(v)
    row = {"hcld": score(out), "own": score(hm(match_spectrum(out, mask, target)))}
    for a in args.exponents:
        row[f"input{a}"] = score(hm(match_spectrum(out, mask, target, a, measure=matched)))
    for detail in args.details:
        other = np.load(args.cache / f"{sub}_{s}_to_{t}_{detail}.npy")
        row[f"{detail}_input1.0"] = score(hm(match_spectrum(other, mask, target, 1.0, measure=matched)))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", choices=["bands", "detail-gain", "input-gain"])
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, required=True, help="a bundle whose manifest holds the site spectra")
    ap.add_argument("--cache", type=Path, required=True, help="quality_simulated.py --cache of that bundle")
    ap.add_argument("--eval", nargs="+", default=["IXI633", "IXI168", "IXI632", "IXI216"])
    ap.add_argument("--train", type=Path, help="training images (bands)")
    ap.add_argument("--train-sites", type=Path, help="participants.tsv with a site column (bands)")
    ap.add_argument("--bins", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--exponents", type=float, nargs="+", default=[1.0])
    ap.add_argument("--gmax", type=float, nargs="+", default=[1.0, 1.5])
    ap.add_argument("--details", nargs="*", default=["g05", "g10"])
    args = ap.parse_args(argv)
    args.manifest = json.loads((args.bundle / "manifest.json").read_text())
    held = qs.load_inputs(args.inputs)
    if args.probe == "bands":
        train = load_train(args.train, args.train_sites)
        args.site_power = {b: {s: np.mean([band_power(v, m, b) for v, m in train[s]], axis=0) for s in SITES}
                           for b in args.bins}
    probe = {"bands": bands, "detail-gain": detail_gain, "input-gain": input_gain}[args.probe]
    rows = []
    for sub, (s, t) in itertools.product(args.eval, itertools.permutations(SITES, 2)):
        v, mask = held[sub][s]
        ref, ref_mask = held[sub][t]
        hist = args.manifest["sites"][t]["intensity_histogram"]

        def hm(x, mask=mask, hist=hist):
            return qs.histogram_match(x, mask, hist["edges"], hist["density"])

        def score(x, v=v, mask=mask, ref=ref, ref_mask=ref_mask, hist=hist):
            return qs.image_metrics(x, ref, ref_mask, v, mask, hist)["ssim"]

        out = np.load(args.cache / f"{sub}_{s}_to_{t}_dual_inv10_samp10.npy")
        rows.append({"s": s, "t": t, **probe(args, (sub, s, t, v, mask, out), hm, score)})
        print(sub, s, "->", t, {k: round(x, 4) for k, x in rows[-1].items() if k not in ("s", "t")}, flush=True)
    keys = [k for k in rows[0] if k not in ("s", "t")]
    for name, group in [("MEAN", rows)] + [(f"from {s}", [r for r in rows if r["s"] == s]) for s in SITES] \
            + [(f"to {t}", [r for r in rows if r["t"] == t]) for t in SITES]:
        print(name, {k: round(float(np.mean([r[k] for r in group])), 4) for k in keys})
    return 0


if __name__ == "__main__":
    sys.exit(main())
