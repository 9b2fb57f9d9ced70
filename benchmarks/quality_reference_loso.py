#!/usr/bin/env python
"""Harmonization toward a ``--reference-image`` from a site the model never saw (leave one site out).

A model bundle trained without one simulated site (``--left-out``, e.g. siteD) harmonizes held-out heads of
the other sites toward a *reference image* of the left-out site: another held-out head scanned there (never
the same head). The ground truth is the same head at the left-out site, so the question of issue 15 can be
answered with numbers: does a reference image from an unseen scanner ever make images worse than the input?

Inputs: model-grid images ``sub-<s>_ses-<site>_{t1w,mask}.nii.gz`` (``--inputs``, as for
quality_simulated.py) or a pack of scripts/demo_model/pack_inputs.py. For every subject ``s``, every source
site ``a`` other than the left-out one and ``--references`` reference heads ``r != s`` (the next subjects in
sorted order, cyclically), methods:

- ``input``: the unharmonized source image;
- ``histmatch_ref``: the brain histogram matched by quantiles onto the reference image's (what a user can do
  with the reference and no model; the Harmonizer's calibration step alone);
- ``hcld_ref``: :class:`hcld_bids.model.harmonize.Harmonizer` of the leave-one-site-out bundle
  (``--bundle``) toward :meth:`~hcld_bids.model.harmonize.Harmonizer.style_from_volume` of the reference,
  under the bundle's own inference regime (what ``--reference-image`` runs);
- ``hcld_ref_cal<W>`` (one per ``--reference-calibration W``): the same harmonization without its
  calibration, then calibrated onto the reference's histogram with weight ``W``
  (:func:`hcld_bids.model.harmonize.calibrate`, what the regime's ``reference_calibration`` does): the
  sweep that chose that setting;
- ``hcld_ref_seen`` and ``hcld_site_seen`` (with ``--bundle-seen``, a bundle trained with every site): the
  same reference through a model that did see the site, and that model's stored prototype of the site
  (what leaving the site out costs).

Metrics per pair (hcld_bids' quality_simulated.image_metrics): SSIM, PSNR, MAE, W1 to the same head, W1 to
the reference's histogram (``w1_site``), structure preservation. Also the share of pairs in which a method's
SSIM to the same head is below the input's, and the worst such difference ("never makes things worse").

Writes ``pairs.tsv``, ``summary.json`` under ``--out`` and prints a markdown table.

    PYTHONPATH=$PWD python benchmarks/quality_reference_loso.py --inputs HELDOUT --bundle LOSO_BUNDLE \
        --left-out siteD --out DIR [--bundle-seen hcld_bids/data/models/demo] [--references 2] \
        [--reference-calibration 0 0.25 0.5 0.75 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (REPO, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _tables import markdown_table  # noqa: E402
from quality_simulated import METRIC_KEYS, image_metrics, load_inputs, summarize, write_tsv  # noqa: E402


def reference_pairs(images: dict, left_out: str, references: int):
    """``(subject, source site, reference subject)`` for every subject seen at ``left_out`` and at another site."""
    subjects = sorted(s for s, sites in images.items() if left_out in sites)
    if len(subjects) < 2:
        raise ValueError(f"need at least two subjects with an image at {left_out}; found {len(subjects)}")
    k = min(references, len(subjects) - 1)
    pairs = []
    for i, s in enumerate(subjects):
        refs = [subjects[(i + j) % len(subjects)] for j in range(1, k + 1)]
        for site in sorted(images[s]):
            if site != left_out:
                pairs.extend((s, site, r) for r in refs)
    return pairs


def worse_than_input(rows: list[dict], method: str) -> dict:
    """Share of pairs whose SSIM to the same head is below the input's, and the worst difference."""
    inp = {r["pair"]: r["ssim"] for r in rows if r["method"] == "input"}
    diffs = np.array([r["ssim"] - inp[r["pair"]] for r in rows if r["method"] == method])
    return {"share_worse": round(float(np.mean(diffs < 0)), 4), "worst_difference": round(float(diffs.min()), 4),
            "mean_difference": round(float(diffs.mean()), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=Path, required=True, help="held-out model-grid images or a pack")
    ap.add_argument("--bundle", type=Path, required=True, help="bundle trained without the left-out site")
    ap.add_argument("--left-out", required=True, help="the site the bundle never saw (the target)")
    ap.add_argument("--bundle-seen", type=Path, default=None, help="a bundle trained with every site")
    ap.add_argument("--references", type=int, default=2, help="reference heads per source image")
    ap.add_argument("--reference-calibration", type=float, nargs="+", default=[], metavar="W",
                    help="also score the calibration onto the reference with these weights in [0, 1]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from hcld_bids.model.bundle import load_bundle
    from dataclasses import replace

    from hcld_bids.model.harmonize import Harmonizer, brain_histogram, calibrate, match_histogram

    if any(not 0.0 <= w <= 1.0 for w in args.reference_calibration):
        raise SystemExit(f"--reference-calibration weights must be in [0, 1], got {args.reference_calibration}")
    images = load_inputs(args.inputs)
    loso = Harmonizer(load_bundle(args.bundle, device=args.device), device=args.device)
    if args.left_out in loso.bundle.prototypes:
        raise SystemExit(f"{args.bundle} has a prototype of {args.left_out}: it was trained with that site")
    seen = Harmonizer(load_bundle(args.bundle_seen, device=args.device), device=args.device) \
        if args.bundle_seen else None
    try:
        pairs = reference_pairs(images, args.left_out, args.references)
    except ValueError as exc:
        raise SystemExit(f"{args.inputs}: {exc}") from None
    print(f"{len(pairs)} pairs: {len({p[0] for p in pairs})} heads x sources x {args.references} references "
          f"toward {args.left_out}; regime {loso.default_regime.to_dict()}", flush=True)
    rows, t0 = [], time.perf_counter()
    for n, (sub, site, ref_sub) in enumerate(pairs, 1):
        inp, mask = images[sub][site]
        target, target_mask = images[sub][args.left_out]
        ref, ref_mask = images[ref_sub][args.left_out]
        edges, density = brain_histogram(ref, ref_mask)
        ref_hist = {"edges": edges, "density": density}
        outputs = {"input": inp.copy(), "histmatch_ref": match_histogram(inp, mask, edges, density)}
        outputs["histmatch_ref"][~mask] = 0.0
        outputs["hcld_ref"] = loso.harmonize(inp, loso.style_from_volume(ref), mask=mask)
        if args.reference_calibration:
            raw = loso.harmonize(inp, loso.style_from_volume(ref), mask=mask,
                                 regime=replace(loso.default_regime, calibrate=False))
            for w in args.reference_calibration:
                out = calibrate(raw, mask, (edges, density), w)
                out[~mask] = 0.0
                outputs[f"hcld_ref_cal{w:g}"] = out
        if seen is not None:
            outputs["hcld_ref_seen"] = seen.harmonize(inp, seen.style_from_volume(ref), mask=mask)
            outputs["hcld_site_seen"] = seen.harmonize(inp, seen.style_from_site(args.left_out), mask=mask)
        for method, out in outputs.items():
            m = image_metrics(out, target, target_mask, inp, mask, ref_hist)
            rows.append({"method": method, "pair": f"{sub}:{site}:{ref_sub}", "subject": sub, "source": site,
                         "reference": ref_sub, **m})
        if n % 6 == 0 or n == len(pairs):
            print(f"  {n}/{len(pairs)} pairs, {time.perf_counter() - t0:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out / "pairs.tsv", rows)
    summary = summarize(rows)
    for method in summary:
        if method != "input":
            summary[method].update(worse_than_input(rows, method))
    by_source = {}
    for method in summary:
        for site in sorted({r["source"] for r in rows}):
            sel = [r["ssim"] for r in rows if r["method"] == method and r["source"] == site]
            by_source.setdefault(method, {})[site] = round(float(np.mean(sel)), 4)
    record = {"left_out": args.left_out, "bundle": str(args.bundle), "bundle_seen": str(args.bundle_seen),
              "regime": loso.default_regime.to_dict(), "pairs": len(pairs), "references": args.references,
              "summary": summary, "ssim_by_source": by_source}
    (args.out / "summary.json").write_text(json.dumps(record, indent=1))
    header = ["method", "n", *METRIC_KEYS, "share_worse", "worst_difference"]
    table = [[m, summary[m]["n"], *[summary[m][k]["mean"] for k in METRIC_KEYS],
              summary[m].get("share_worse", ""), summary[m].get("worst_difference", "")] for m in summary]
    print(markdown_table(header, table))
    print("SSIM by source site:", json.dumps(by_source))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
