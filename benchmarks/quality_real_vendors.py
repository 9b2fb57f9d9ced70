#!/usr/bin/env python
"""Harmonization quality on real scans of three vendors: each scan toward each vendor, HCLD vs histogram matching.

Material: the real T1w scans shipped with the package (hcld_bids/data/t1w: Philips Elition X, Siemens Prisma
Fit with and without prescan normalize, United Imaging uMR 770 test-retest pair; 3 mm). There is no ground
truth here (nobody was scanned on every vendor), so the figures are distances to the target vendor's
intensity distribution and measures of how much anatomy the output keeps.

Steps, as ``hcld-bids-demo`` does them:

1. a BIDS dataset is written with :func:`hcld_bids.testing.make_bids_dataset` (sub-01 Philips, sub-02
   Siemens, sub-03 UIH; two runs each so that both Siemens and both UIH scans are used; Philips' second run
   would be a byte copy of its first and is removed);
2. ``hcld-bids BIDS DERIV train --add-site-prototypes`` (run through :func:`hcld_bids.cli.run.main`)
   preprocesses the scans (N4, affine registration to MNI152NLin6Asym, brain mask, percentile scaling,
   model grid) and adds one style prototype and one brain-intensity histogram per vendor to a copy of the
   bundle; the model-grid images are read back from ``WORK/train/inputs``;
3. every scan is mapped toward every vendor (its own included) in this process with the library:
   ``input`` (unchanged), ``histmatch`` (brain intensities mapped by quantiles onto the vendor's stored
   histogram, as in quality_simulated.py) and ``hcld`` (:class:`hcld_bids.model.harmonize.Harmonizer`,
   under the bundle's own inference regime; ``--inversion-steps`` / ``--sampling-steps`` override its DDIM
   steps).

``--quick`` (for the tests) replaces steps 1-2 by a rough stand-in without ANTs: each scan is placed on the
template grid by :func:`hcld_bids.reports.synthetic.resample_scan` (brain centre aligned, no N4, no
registration, an ellipsoid brain mask), cropped to the model grid, and the prototypes and histograms are
added with :func:`hcld_bids.model.bundle.add_prototypes` directly. Its figures mean nothing.

Metrics per (scan, target vendor, method), inside the input's brain mask:

- ``w1_target``: Wasserstein-1 distance between the output's brain-intensity histogram and the target
  vendor's stored histogram (made from that vendor's scans, the scan itself included when it is of that
  vendor). Histogram matching maps onto exactly this histogram, so its W1 is near 0 by construction;
  the ``input`` row is the "before" value;
- ``dice``: Dice between the input's brain mask and the mask recomputed on the output by the project's own
  :func:`hcld_bids.reports.metrics.output_mask` (the QC's re-derivation for brain-only outputs: above
  1e-3, closed, holes filled, largest component); the ``input`` row shows what the function gives on the
  unchanged masked input;
- ``grad_corr``: Pearson correlation, in the brain, of the gradient magnitudes (Gaussian derivative,
  sigma 1 voxel) of input and output;
- ``structure_preservation``: the QC's measure (hcld_bids.reports.metrics).

Writes ``vendors.tsv`` (one row per scan, target and method) and ``summary.tsv`` under ``--out`` and prints
the tables (markdown).

    PYTHONPATH=$PWD python benchmarks/quality_real_vendors.py --out DIR [--work DIR] [--scans ...] \
        [--inversion-steps 30] [--sampling-steps 10] [--device cpu] [--nprocs 2] [--cache DIR] [--quick]

The prototypes and histograms are made from every scan in the dataset of ``--work`` (all five unless the
dataset was first written with fewer ``--scans``); ``--scans`` also selects the scans harmonized.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _tables import markdown_table  # noqa: E402
from quality_simulated import histogram_match, write_tsv  # noqa: E402

from hcld_bids.reports import metrics  # noqa: E402

DEMO_BUNDLE = REPO / "hcld_bids" / "data" / "models" / "demo"
#: Scan label -> (participant, run, vendor) in the dataset written by step 1.
SCANS = {
    "philips": ("01", 1, "philips"),
    "siemens-s5-nonorm": ("02", 1, "siemens"),
    "siemens-s6-norm": ("02", 2, "siemens"),
    "uih-run1": ("03", 1, "uih"),
    "uih-run2": ("03", 2, "uih"),
}
SUBJECT_VENDOR = {"01": "philips", "02": "siemens", "03": "uih"}
METHODS = ("input", "histmatch", "hcld")
METRIC_KEYS = ("w1_target", "dice", "grad_corr", "structure_preservation")


def write_dataset(root: Path, scans: list[str]) -> Path:
    """Step 1: the BIDS dataset holding ``scans`` (labels of :data:`SCANS`)."""
    from hcld_bids.testing.dataset import make_bids_dataset

    subjects = sorted({SCANS[s][0] for s in scans})
    bids = make_bids_dataset(root, subjects={sub: SUBJECT_VENDOR[sub] for sub in subjects}, runs=2,
                             scans_dir=REPO / "hcld_bids" / "data" / "t1w")
    wanted = {(SCANS[s][0], SCANS[s][1]) for s in scans}
    for path in sorted(bids.glob("sub-*/anat/*_run-*_T1w.*")):
        sub = path.name.split("_")[0][4:]
        run = int(path.name.split("_run-")[1].split("_")[0])
        if (sub, run) not in wanted:
            path.unlink()
    return bids


def gradient_correlation(a, b, mask) -> float:
    """Pearson correlation in ``mask`` of the gradient magnitudes (sigma 1 voxel) of ``a`` and ``b``."""
    from scipy import ndimage as ndi

    ga = ndi.gaussian_gradient_magnitude(a.astype(np.float64), sigma=1.0)[mask]
    gb = ndi.gaussian_gradient_magnitude(b.astype(np.float64), sigma=1.0)[mask]
    if ga.std() == 0 or gb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ga, gb)[0, 1])


def vendor_metrics(out, inp, mask, target_hist) -> dict:
    edges = metrics.histogram_edges()
    _, h_out = metrics.brain_histogram(out, mask)
    return {
        "w1_target": metrics.wasserstein_1d(
            h_out, metrics.rebin_density(target_hist["density"], target_hist["edges"], edges), edges),
        "dice": metrics.mask_dice(mask, metrics.output_mask(out, mask)),
        "grad_corr": gradient_correlation(inp, out, mask),
        "structure_preservation": metrics.structure_preservation(inp, out, mask, voxel_size_mm=2.0),
    }


def preprocess_with_cli(root: Path, args):
    """Steps 1-2: the dataset and ``hcld-bids ... train --add-site-prototypes``; returns the new bundle, the
    model-grid images ``{label: (vendor, volume, mask)}``, the seconds taken and the exit code."""
    import nibabel as nib

    from hcld_bids.cli.run import main as hcld_bids
    from hcld_bids.config import TRAINED_MODEL_SUBDIR

    bids = root / "bids"
    if not (bids / "dataset_description.json").is_file():
        write_dataset(bids, args.scans)
    deriv, work = root / "derivatives", root / "work"
    cmd = [str(bids), str(deriv), "train", "--add-site-prototypes", "--model", str(args.bundle), "-w", str(work),
           "--nprocs", str(args.nprocs), "--device", args.device, "--skip-bids-validation"]
    print("$ hcld-bids " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    code = hcld_bids(cmd)
    seconds = time.perf_counter() - t0
    if code != 0:
        print(f"hcld-bids train --add-site-prototypes failed (exit {code})", file=sys.stderr)
        return None, None, seconds, code
    inputs = work / "train" / "inputs"
    images = {}
    for label in args.scans:
        sub, run, vendor = SCANS[label]
        name = f"sub-{sub}_run-{run}"
        if not (inputs / f"{name}_t1w.nii.gz").is_file():
            name = f"sub-{sub}"  # a dataset with a single run per subject has no run entity
        images[label] = (vendor, np.asarray(nib.load(inputs / f"{name}_t1w.nii.gz").dataobj, dtype=np.float32),
                         np.asarray(nib.load(inputs / f"{name}_mask.nii.gz").dataobj) > 0)
    return deriv / TRAINED_MODEL_SUBDIR, images, seconds, 0


def quick_inputs(root: Path, bundle_path: Path, scans: list[str]):
    """``--quick``: scans placed on the model grid without ANTs, prototypes added with the library."""
    import shutil

    from hcld_bids.model.bundle import add_prototypes, load_bundle
    from hcld_bids.preproc.grid import GridSpec, crop_to_grid
    from hcld_bids.reports.synthetic import resample_scan
    from hcld_bids.testing.dataset import SCANNERS
    from hcld_bids.levels.train import site_targets

    grid = GridSpec.from_dict(load_bundle(bundle_path).manifest["preprocessing"]["grid"])
    images = {}
    for label in scans:
        _, run, vendor = SCANS[label]
        vol, mask = resample_scan(REPO / "hcld_bids" / "data" / "t1w" / f"{SCANNERS[vendor][run - 1]}.nii.gz")
        mask = crop_to_grid(mask, grid) > 0
        images[label] = (vendor, crop_to_grid(vol, grid).astype(np.float32) * mask, mask)
    dest = root / "bundle"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(bundle_path, dest)
    labels = list(images)
    targets = site_targets([images[k][1] for k in labels], [images[k][2] for k in labels],
                           [images[k][0] for k in labels])
    by_site = {v: [images[k][1] for k in labels if images[k][0] == v] for v in targets}
    add_prototypes(dest, by_site, overwrite_sites=True,
                   site_info={v: {**targets[v], "n_images": len(by_site[v])} for v in by_site})
    return dest, images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the TSV files")
    ap.add_argument("--work", type=Path, help="dataset, derivatives and nipype work (default: a temporary folder; "
                                              "a kept folder is reused by a rerun)")
    ap.add_argument("--bundle", type=Path, default=DEMO_BUNDLE, help="model bundle (default: the demo model)")
    ap.add_argument("--scans", nargs="+", choices=sorted(SCANS), default=sorted(SCANS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--inversion-steps", type=int, default=None, help="override the bundle regime's DDIM steps")
    ap.add_argument("--sampling-steps", type=int, default=None, help="override the bundle regime's DDIM steps")
    ap.add_argument("--cache", type=Path, help="keep HCLD outputs here as .npy and reuse them")
    ap.add_argument("--quick", action="store_true", help="no ANTs preprocessing, no CLI (smoke test of the script)")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    root = (args.work or Path(tempfile.mkdtemp(prefix="hcld_vendors_"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("TEMPLATEFLOW_HOME"):  # offline: the template ships with the package
        from hcld_bids.templates import seed_templateflow_home

        seed_templateflow_home(root / "templateflow")
        os.environ["TEMPLATEFLOW_HOME"] = str(root / "templateflow")
    if args.quick:
        t0 = time.perf_counter()
        bundle_dir, images = quick_inputs(root, args.bundle, args.scans)
        prep_seconds = time.perf_counter() - t0
    else:
        bundle_dir, images, prep_seconds, code = preprocess_with_cli(root, args)
        if code != 0:
            return code

    from hcld_bids.model.bundle import load_bundle
    from hcld_bids.model.harmonize import Harmonizer

    bundle = load_bundle(bundle_dir, device=args.device)
    harmonizer = Harmonizer(bundle, device=args.device)
    vendors = sorted({v for v, _, _ in images.values()})
    regime = harmonizer.resolve_regime(inversion_steps=args.inversion_steps, sampling_steps=args.sampling_steps)
    stamp = hashlib.sha256(json.dumps(regime.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    print(f"preprocessing + prototypes of {', '.join(vendors)}: {prep_seconds:.0f} s"
          f"{' (--quick: no ANTs)' if args.quick else ''}; HCLD {regime} on {args.device}", flush=True)

    rows, hcld_seconds = [], []
    for target in vendors:
        style = harmonizer.style_from_site(target)
        hist = bundle.manifest["sites"][target]["intensity_histogram"]
        for label, (vendor, inp, mask) in images.items():
            cached = args.cache / f"{label}_to_{target}_{stamp}.npy" if args.cache else None
            t0 = time.perf_counter()
            if cached is not None and cached.is_file():
                hcld = np.load(cached)
            else:
                hcld = harmonizer.harmonize(inp, style, regime=regime, mask=mask)
                hcld_seconds.append(time.perf_counter() - t0)
                if cached is not None:
                    args.cache.mkdir(parents=True, exist_ok=True)
                    np.save(cached, hcld)
            outputs = {"input": inp * mask, "histmatch": histogram_match(inp, mask, hist["edges"], hist["density"]),
                       "hcld": hcld}
            for method, image in outputs.items():
                rows.append({"scan": label, "vendor": vendor, "target": target, "same_vendor": int(vendor == target),
                             "method": method, **vendor_metrics(image, inp, mask, hist)})
            print(f"  {label} -> {target}: W1 " + "  ".join(f"{r['method']} {r['w1_target']:.4f}" for r in rows[-3:])
                  + f"  (HCLD {time.perf_counter() - t0:.1f} s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out / "vendors.tsv", rows)
    summary_rows = []
    for subset, keep in (("other vendor", lambda r: not r["same_vendor"]), ("same vendor", lambda r: r["same_vendor"]),
                         ("all", lambda r: True)):
        for method in METHODS:
            sel = [r for r in rows if r["method"] == method and keep(r)]
            if not sel:
                continue
            summary_rows.append({"pairs": subset, "method": method, "n": len(sel),
                                 **{f"{k}_mean": float(np.nanmean([r[k] for r in sel])) for k in METRIC_KEYS},
                                 **{f"{k}_min": float(np.nanmin([r[k] for r in sel])) for k in METRIC_KEYS}})
    write_tsv(args.out / "summary.tsv", summary_rows)
    (args.out / "summary.json").write_text(json.dumps({
        "scans": args.scans, "vendors": vendors, "bundle": str(args.bundle), "device": args.device,
        "regime": regime.to_dict(),
        "preprocessing_seconds": round(prep_seconds, 1),
        "hcld_seconds_mean": round(float(np.mean(hcld_seconds)), 2) if hcld_seconds else None,
        "summary": summary_rows}, indent=1))

    print(f"\n{len(images)} scans x {len(vendors)} target vendors\n")
    print(markdown_table(
        ["pairs", "method", "n", "W1 to target vendor", "brain-mask Dice (min)", "gradient correlation (min)",
         "structure preservation"],
        ([r["pairs"], r["method"], r["n"], f"{r['w1_target_mean']:.4f}", f"{r['dice_mean']:.3f} ({r['dice_min']:.3f})",
          f"{r['grad_corr_mean']:.3f} ({r['grad_corr_min']:.3f})", f"{r['structure_preservation_mean']:.3f}"]
         for r in summary_rows)))
    print("\nper scan and target (W1 to target vendor: input -> histmatch / hcld; HCLD gradient correlation):\n")

    def cell(label, target):
        by = {r["method"]: r for r in rows if r["scan"] == label and r["target"] == target}
        return (f"{by['input']['w1_target']:.3f} -> {by['histmatch']['w1_target']:.3f} / "
                f"{by['hcld']['w1_target']:.3f}; r {by['hcld']['grad_corr']:.2f}")

    print(markdown_table(["scan", *vendors], ([label, *(cell(label, t) for t in vendors)] for label in images)))
    if hcld_seconds:
        print(f"\nHCLD: {np.mean(hcld_seconds):.1f} s per image ({len(hcld_seconds)} computed)")
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
