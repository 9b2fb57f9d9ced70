#!/usr/bin/env python
"""What cheaper N4 and registration settings would change in the preprocessed images, measured before anyone
switches a default.

Runs the anatomical preprocessing of the participant level (validate, N4 on the head, registration, brain
mask, N4 in the brain, resampling, scaling, model grid) on each T1w with the default settings and with each
variant below, and prints per image and variant the seconds of the changed steps and, against the default:
the Pearson correlation and the SSIM of the model-grid image (what the model consumes), the Dice of the
model-grid brain masks, and the largest displacement between the two T1w -> template transforms over the
template's brain (mm). The models are trained on the default preprocessing, so any variant with a visible
change needs retraining, and the methods text and sidecars would have to say so.

Variants:

* ``n4-head-20``: the first N4 pass (whole head) with 4 x 20 iterations instead of 4 x 50; that pass only
  feeds the registration;
* ``no-n4-head``: no first N4 pass, the validated image is registered as it is;
* ``affine-fast``: ANTsPy's ``AffineFast`` registration recipe (what ``--sloppy`` uses) instead of
  ``antsRegistrationSyNQuick[a]``;
* ``n4-head-20+affine-fast``: both;
* ``other-seed``: the default settings with another seed of ANTs' metric sampling: how much the default
  itself moves with a seed nobody chose, the scale against which the variants' changes can be read.

    PYTHONPATH=$PWD python benchmarks/preprocessing_cuts.py [--ixi DIR --ixi-count 3] [--out cuts.tsv]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("default", "n4-head-20", "no-n4-head", "affine-fast", "n4-head-20+affine-fast", "other-seed")
STEPS = ("n4_head", "register", "n4_brain")


def build(variant: str, model, threads: int):
    """The participant level's anatomical workflow with ``variant``'s settings."""
    from hcld_bids.workflows.anatomical import init_anat_preproc_wf

    wf = init_anat_preproc_wf(template=model.template, resolution=model.resolution, grid=model.grid,
                              registration=model.registration, omp_nthreads=threads)
    if "n4-head-20" in variant:
        wf.get_node("n4_head").inputs.iterations = [20, 20, 20, 20]
    if "affine-fast" in variant:
        wf.get_node("register").inputs.sloppy = True
    if variant == "other-seed":
        wf.get_node("register").inputs.random_seed = 1
    if variant == "no-n4-head":
        validate, n4_head, register = (wf.get_node(n) for n in ("validate", "n4_head", "register"))
        wf.disconnect(n4_head, "out_file", register, "moving_file")
        wf.remove_nodes([n4_head])
        wf.connect(validate, "out_file", register, "moving_file")
    return wf


def run(t1w: Path, variant: str, model, work: Path, keep: Path, threads: int) -> dict:
    """Run one variant; copy what is compared into ``keep``; seconds of the steps that ran."""
    from nipype.utils.filemanip import loadpkl

    wf = build(variant, model, threads)
    wf.base_dir = str(work)
    wf.inputs.inputnode.t1w = str(t1w)
    wf.config["execution"].update({"hash_method": "content", "remove_unnecessary_outputs": "false",
                                   "crashfile_format": "txt", "crashdump_dir": str(work / "crash")})
    start = time.perf_counter()
    wf.run(plugin="Linear")
    seconds = {"wall": time.perf_counter() - start}
    base = work / wf.name
    for step in STEPS:
        result = base / step / f"result_{step}.pklz"
        seconds[step] = loadpkl(result).runtime.duration if step != "n4_head" or variant != "no-n4-head" else 0.0
    crop = loadpkl(base / "crop" / "result_crop.pklz").outputs
    reg = loadpkl(base / "register" / "result_register.pklz").outputs
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(crop.out_file, keep / "model_t1w.nii.gz")
    shutil.copy(crop.out_mask, keep / "model_mask.nii.gz")
    shutil.copy(reg.forward_transform, keep / "forward.mat")
    return seconds


def compare(default: Path, other: Path, points: np.ndarray) -> dict:
    import ants
    import nibabel as nib
    from skimage.metrics import structural_similarity

    a = np.asarray(nib.load(default / "model_t1w.nii.gz").dataobj, dtype=np.float64)
    b = np.asarray(nib.load(other / "model_t1w.nii.gz").dataobj, dtype=np.float64)
    ma = np.asarray(nib.load(default / "model_mask.nii.gz").dataobj) > 0
    mb = np.asarray(nib.load(other / "model_mask.nii.gz").dataobj) > 0
    union = ma | mb
    corr = float(np.corrcoef(a[union], b[union])[0, 1])
    ssim = float(structural_similarity(a, b, data_range=1.0))
    dice = float(2 * (ma & mb).sum() / max(1, ma.sum() + mb.sum()))
    ta = ants.read_transform(str(default / "forward.mat"))
    tb = ants.read_transform(str(other / "forward.mat"))
    shift = max(float(np.linalg.norm(np.subtract(ta.apply_to_point(tuple(p)), tb.apply_to_point(tuple(p)))))
                for p in points)
    return {"correlation": corr, "ssim": ssim, "mask_dice": dice, "max_shift_mm": shift,
            "mean_abs_diff": float(np.abs(a - b)[union].mean())}


def brain_points(model, count: int = 2000) -> np.ndarray:
    """World coordinates of ``count`` voxels of the template's brain mask (where the transforms are compared)."""
    import nibabel as nib

    from hcld_bids.templates import check_templates

    files = check_templates(model.template, model.resolution)
    img = nib.load(files["brain_mask"])
    ijk = np.argwhere(np.asarray(img.dataobj) > 0)
    ijk = ijk[np.random.default_rng(0).choice(len(ijk), size=min(count, len(ijk)), replace=False)]
    xyz = nib.affines.apply_affine(img.affine, ijk)
    return xyz * np.array([-1.0, -1.0, 1.0])  # RAS (nibabel) -> LPS (ITK/ANTs physical points)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ixi", type=Path, help="a folder of IXI T1w heads (*.nii.gz), e.g. ../shared/data/ixi-hh-2mm")
    ap.add_argument("--ixi-count", type=int, default=3, help="how many of them (the first ones by name)")
    ap.add_argument("--variants", default=",".join(VARIANTS[1:]))
    ap.add_argument("--scans", help="comma-separated names of vendored scans to use (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, help="work here and keep it (default: a temporary directory)")
    ap.add_argument("--out", type=Path, help="also write the rows as TSV")
    args = ap.parse_args(argv)

    from hcld_bids.config import DEMO_MODEL_DIR
    from hcld_bids.levels.model import open_model

    model = open_model(DEMO_MODEL_DIR)
    scans = sorted((REPO / "hcld_bids" / "data" / "t1w").glob("*.nii.gz"))
    if args.scans:
        scans = [s for s in scans if s.name.replace(".nii.gz", "") in args.scans.split(",")]
    if args.ixi:
        scans += sorted(args.ixi.glob("*.nii.gz"))[: args.ixi_count]
    root = args.work or Path(tempfile.mkdtemp(prefix="hcld_cuts_"))
    points = brain_points(model)
    variants = [v for v in args.variants.split(",") if v]
    columns = ["image", "variant", "n4_head_s", "register_s", "n4_brain_s", "correlation", "ssim", "mask_dice",
               "max_shift_mm", "mean_abs_diff"]
    print(f"# anatomical preprocessing, default vs cheaper variants; {args.threads} ANTs threads; model grid of "
          f"the demo model; comparisons inside the union of the two model-grid brain masks")
    print("\t".join(columns))
    rows = []
    for scan in scans:
        name = scan.name.replace(".nii.gz", "")
        work = root / name
        kept = {}
        timings = {}
        for variant in ["default", *variants]:
            kept[variant] = work / "kept" / variant
            timings[variant] = run(scan, variant, model, work / "wf", kept[variant], args.threads)
        for variant in ["default", *variants]:
            row = {"image": name, "variant": variant, "n4_head_s": timings[variant]["n4_head"],
                   "register_s": timings[variant]["register"], "n4_brain_s": timings[variant]["n4_brain"]}
            if variant != "default":
                row.update(compare(kept["default"], kept[variant], points))
            rows.append(row)
            print("\t".join(f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                            for c in columns), flush=True)
    print("# mean over images")
    for variant in variants:
        sel = [r for r in rows if r["variant"] == variant]
        print("\t".join(["mean", variant] + [f"{np.mean([r[c] for r in sel]):.4f}" for c in columns[2:]]))
    sel = [r for r in rows if r["variant"] == "default"]
    print("\t".join(["mean", "default"] + [f"{np.mean([r[c] for r in sel]):.4f}" for c in columns[2:5]]))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\t".join(columns) + "\n")
            for row in rows:
                f.write("\t".join(str(row.get(c, "")) for c in columns) + "\n")
    if not args.work:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
