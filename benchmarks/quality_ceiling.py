#!/usr/bin/env python
"""The ceiling of the simulated quality table: a rescan of the same head at the target site.

The simulated held-out set compares a harmonized image with the same head at the target site. That target
carries its own noise realisation and bias field (and the preprocessing's own N4, registration and scaling
of that scan), which no harmonizer can know. The best a harmonizer that outputs *a* target-site image of the
head can do is therefore what a second scan of the same head at the same site scores: the same simulated
site rendered with another seed (another noise and bias-field draw, ``scripts/make_ixi_sites.py --seed``),
preprocessed the same way. (An estimator of the expected image, a denoised rescan, could score somewhat
higher; none is available here.)

Inputs: two folders of model-grid images ``sub-<s>_ses-<site>_{t1w,mask}.nii.gz`` (or packs): ``--inputs``,
the held-out set of the quality table, and ``--rescan``, the same heads and sites rendered with another
seed. For every (subject, site) in both, the rescan is scored against the original with
quality_simulated.image_metrics (SSIM, PSNR, MAE, W1 to the same head; ``structure_preservation`` compares
the rescan with the original). ``--pairs`` (a pairs.tsv of quality_simulated.py) adds each method's mean
SSIM per target site beside the rescan's.

Writes ``rescan.tsv`` and ``summary.json`` under ``--out`` and prints a markdown table per target site.

    PYTHONPATH=$PWD python benchmarks/quality_ceiling.py --inputs HELDOUT --rescan RESCAN --out DIR \
        [--pairs benchmarks/results/quality_simulated/pairs.tsv]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (REPO, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _tables import markdown_table  # noqa: E402
from quality_simulated import image_metrics, load_inputs, write_tsv  # noqa: E402

KEYS = ("ssim", "psnr", "mae", "w1_same_head")


def rescan_rows(images: dict, rescans: dict) -> list[dict]:
    """One row per (subject, site) present in both: the rescan scored against the original."""
    from hcld_bids.model.harmonize import brain_histogram

    rows = []
    for sub in sorted(set(images) & set(rescans)):
        for site in sorted(set(images[sub]) & set(rescans[sub])):
            target, target_mask = images[sub][site]
            again, again_mask = rescans[sub][site]
            edges, density = brain_histogram(target, target_mask)
            m = image_metrics(again, target, target_mask, again, again_mask, {"edges": edges, "density": density})
            rows.append({"subject": sub, "site": site, **{k: m[k] for k in KEYS}})
    if not rows:
        raise SystemExit("no (subject, site) is in both --inputs and --rescan")
    return rows


def method_ssim_by_target(pairs_tsv: Path) -> dict:
    """``{method: {target site: mean SSIM}}`` from a pairs.tsv of quality_simulated.py."""
    acc: dict = {}
    with open(pairs_tsv, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            acc.setdefault(row["method"], {}).setdefault(row["target"], []).append(float(row["ssim"]))
    return {m: {t: round(float(np.mean(v)), 4) for t, v in by.items()} for m, by in acc.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=Path, required=True, help="the held-out set of the quality table")
    ap.add_argument("--rescan", type=Path, required=True, help="the same heads and sites, another seed")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pairs", type=Path, default=None, help="pairs.tsv of quality_simulated.py to set beside")
    args = ap.parse_args(argv)

    rows = rescan_rows(load_inputs(args.inputs), load_inputs(args.rescan))
    sites = sorted({r["site"] for r in rows})
    per_site = {s: {k: round(float(np.mean([r[k] for r in rows if r["site"] == s])), 4) for k in KEYS}
                for s in sites}
    overall = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in KEYS}
    methods = method_ssim_by_target(args.pairs) if args.pairs else {}
    args.out.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out / "rescan.tsv", rows)
    (args.out / "summary.json").write_text(json.dumps(
        {"n": len(rows), "rescan": {"overall": overall, "by_site": per_site}, "methods_ssim_by_target": methods,
         "pairs": str(args.pairs) if args.pairs else None}, indent=1))
    header = ["target site", "rescan SSIM", "rescan PSNR", "rescan W1", *[f"{m} SSIM" for m in methods]]
    table = [[s, per_site[s]["ssim"], per_site[s]["psnr"], per_site[s]["w1_same_head"],
              *[methods[m].get(s, "") for m in methods]] for s in sites]
    table.append(["all", overall["ssim"], overall["psnr"], overall["w1_same_head"],
                  *[round(float(np.mean(list(methods[m].values()))), 4) for m in methods]])
    print(f"{len(rows)} rescans")
    print(markdown_table(header, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
