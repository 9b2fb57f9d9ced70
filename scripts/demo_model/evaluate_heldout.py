#!/usr/bin/env python
"""Held-out evaluation of a model bundle on traveling subjects: the same head scanned at every site.

For each held-out subject and each (source site, target site) pair, the subject's source-site image is
harmonized toward the target site's prototype and compared, inside the brain, with the same head at the
target site (known ground truth). Baselines on the same images: the input unchanged, and per-site histogram
matching (the input's brain intensities mapped onto the target site's training histogram, read from the
bundle manifest). Metrics: SSIM (3D, Gaussian window sigma 1.5 voxels, averaged over the brain), PSNR and
MAE in the brain, Wasserstein-1 distance between brain-intensity histograms, and anatomy preservation
(structure preservation of hcld_bids.reports.metrics between input and output).

benchmarks/quality_simulated.py is the fuller benchmark (every site pair, Nyul normalization, a site
classifier) and holds the loading, baseline and metric functions used here.

Inputs are the model-grid images the train level's preprocessing exported for the held-out dataset
(``WORK/train/inputs/sub-<s>_ses-<site>_{t1w,mask}.nii.gz``).

    PYTHONPATH=$PWD python scripts/demo_model/evaluate_heldout.py WORK_DIR BUNDLE_DIR --out results.json \
        [--targets siteB] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import quality_simulated as quality  # noqa: E402

from hcld_bids.model.bundle import load_bundle  # noqa: E402
from hcld_bids.model.harmonize import Harmonizer  # noqa: E402


#: Names of the metrics in this script's JSON (kept from before the functions moved to the benchmark).
_KEYS = {"w1_same_head": "wasserstein_to_same_head", "w1_site": "wasserstein_to_site"}


def image_metrics(out, ref, ref_mask, inp, inp_mask, target_hist):
    values = quality.image_metrics(out, ref, ref_mask, inp, inp_mask, target_hist)
    return {_KEYS.get(k, k): v for k, v in values.items()}


def summarize(rows):
    keys = [k for k in rows[0] if k not in ("method", "subject", "source", "target", "seconds")]
    return quality.summarize(rows, keys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--targets", nargs="*", default=None, help="target sites (default: every site)")
    ap.add_argument("--subjects", type=int, default=None, help="use the first N held-out subjects")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inversion-steps", type=int, default=30)
    ap.add_argument("--sampling-steps", type=int, default=10)
    args = ap.parse_args(argv)

    bundle = load_bundle(args.bundle, device=args.device)
    harmonizer = Harmonizer(bundle, device=args.device)
    images = quality.load_inputs(args.work / "train" / "inputs")
    subjects = sorted(images)[: args.subjects] if args.subjects else sorted(images)
    sites = sorted({s for sub in subjects for s in images[sub]})
    targets = args.targets or sites
    rows = []
    for target in targets:
        style = harmonizer.style_from_site(target)
        hist = bundle.manifest["sites"][target]["intensity_histogram"]
        for sub in subjects:
            ref, ref_mask = images[sub][target]
            for source in sites:
                if source == target:
                    continue
                inp, inp_mask = images[sub][source]
                t0 = time.perf_counter()
                out = harmonizer.harmonize(inp, style, inversion_steps=args.inversion_steps,
                                           sampling_steps=args.sampling_steps, mask=inp_mask)
                seconds = time.perf_counter() - t0
                outputs = {"input (no harmonization)": inp,
                           "histogram matching to the target site": quality.histogram_match(
                               inp, inp_mask, hist["edges"], hist["density"]),
                           "hcld": out}
                for method, image in outputs.items():
                    row = {"method": method, "subject": sub, "source": source, "target": target,
                           **image_metrics(image, ref, ref_mask, inp, inp_mask, hist)}
                    if method == "hcld":
                        row["seconds"] = round(seconds, 2)
                    rows.append(row)
                print(sub, source, "->", target, {m: round(r["ssim"], 4) for m, r in
                                                  zip(outputs, rows[-3:])}, f"{seconds:.1f} s", flush=True)
    result = {
        "description": "held-out traveling subjects (IXI heads never seen in training, each simulated at every "
                       "site); each source-site image harmonized toward another site and compared in the brain "
                       "with the same head at that site",
        "subjects": subjects, "sites": sites, "targets": targets,
        "inversion_steps": args.inversion_steps, "sampling_steps": args.sampling_steps,
        "summary": summarize(rows), "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=1))
    for method, summary in result["summary"].items():
        print(f"{method:40s} " + "  ".join(f"{k} {v['mean']:.4f}" for k, v in summary.items() if k != "n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
