#!/usr/bin/env python
"""Run the anatomical preprocessing workflow on real scans and check its brain masks.

For every scan of the data directory and every template resolution (MNI152NLin6Asym at 2 mm and
1 mm) it prints:

* the brain mask volume in native space (cm3; must lie in 900-2000),
* the Dice overlap of the subject's template-space mask with the template brain mask (>= 0.9),
* the correlation of the registered T1w with the template inside the template mask (a
  registration sanity figure: a failed registration gives ~0.1, a good one 0.5-0.7),
* the share of the brain mask that falls outside the model window,
* step timings (nipype node run times) and the total.

Pairs of scans of one person (the Siemens pair reconstructed with and without prescan
normalisation; the UIH test-retest pair) are also compared: native volume ratio and Dice of their
template-space masks.

The 2 mm template files come from the package's offline copy, the 1 mm ones are built from
../shared/data/templates by scripts/make_template_mask.py, both into a temporary
TEMPLATEFLOW_HOME. Exit code 1 when any scan fails a criterion.

Usage::

    python scripts/check_preprocessing.py [--data ../shared/data/real-t1w] [--resolution 2] \
        [--png /tmp/check_png]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "MNI152NLin6Asym"
VOLUME_RANGE_CM3 = (900.0, 2000.0)
MIN_DICE = 0.9
PAIRS = [
    ("siemens_prismafit3T_xa30_s5_nonorm", "siemens_prismafit3T_xa30_s6_norm"),
    ("uih_umr770_3T_run1_2mm", "uih_umr770_3T_run2_2mm"),
]


def prepare_templateflow(home: Path, templates_dir: Path, resolutions) -> None:
    """Seed ``home`` with the offline 2 mm files and build the 1 mm ones when asked."""
    from hcld_bids.templates import seed_templateflow_home

    seed_templateflow_home(home)
    if 1 in resolutions:
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "make_template_mask.py"),
             "--templates", str(templates_dir), "--out", str(home), "--resolution", "1"],
            check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )


def run_scan(t1w: Path, resolution: int, work: Path, omp_nthreads: int) -> dict:
    import nibabel as nib
    import numpy as np

    from hcld_bids.preproc.grid import crop_to_grid, model_grid
    from hcld_bids.templates import check_templates
    from hcld_bids.workflows.anatomical import init_anat_preproc_wf

    grid = model_grid(TEMPLATE, resolution)
    wf = init_anat_preproc_wf(template=TEMPLATE, resolution=resolution, grid=grid,
                              omp_nthreads=omp_nthreads, name="anat_preproc_wf")
    wf.base_dir = str(work)
    wf.inputs.inputnode.t1w = str(t1w)
    start = time.perf_counter()
    graph = wf.run(plugin="Linear")
    total = time.perf_counter() - start
    nodes = {node.name: node for node in graph.nodes()}
    timings = {name: float(getattr(node.result.runtime, "duration", 0.0)) for name, node in nodes.items()}

    def out(node, field):
        return getattr(nodes[node].result.outputs, field)

    files = check_templates(TEMPLATE, resolution)
    template_mask = np.asarray(nib.load(files["brain_mask"]).dataobj) > 0
    template_t1w = np.asarray(nib.load(files["T1w"]).dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(out("brain_mask", "out_file")).dataobj) > 0
    native = nib.load(out("brain_mask_native", "out_file"))
    native_cm3 = float((np.asarray(native.dataobj) > 0).sum()) * float(np.prod(native.header.get_zooms()[:3])) / 1000
    warped = np.asarray(nib.load(out("to_template", "out_file")).dataobj, dtype=np.float64)
    dice = 2.0 * float((mask & template_mask).sum()) / float(mask.sum() + template_mask.sum())
    ncc = float(np.corrcoef(warped[template_mask], template_t1w[template_mask])[0, 1])
    outside = 1.0 - float(crop_to_grid(mask, grid).sum()) / float(mask.sum())
    return {
        "native_cm3": native_cm3, "dice": dice, "ncc": ncc, "outside_window": outside,
        "timings": timings, "total_s": total, "mask": mask,
        "low": out("scale", "low"), "high": out("scale", "high"),
        "files": {k: out(*v) for k, v in {
            "t1w_preproc": ("scale", "out_file"), "brain_mask": ("brain_mask", "out_file"),
            "model_t1w": ("crop", "out_file"), "n4_native": ("n4_brain", "out_file"),
            "mask_native": ("brain_mask_native", "out_file")}.items()},
    }


def save_png(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np

    rows = [("t1w_preproc", "brain_mask"), ("model_t1w", None), ("n4_native", "mask_native")]
    fig, axes = plt.subplots(3, 3, figsize=(12, 12))
    for row, (image_key, mask_key) in enumerate(rows):
        data = np.asarray(nib.load(result["files"][image_key]).dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(result["files"][mask_key]).dataobj) if mask_key else None
        for col in range(3):
            index = [slice(None)] * 3
            index[col] = data.shape[col] // 2
            ax = axes[row, col]
            ax.imshow(np.rot90(data[tuple(index)]), cmap="gray")
            if mask is not None:
                ax.contour(np.rot90(mask[tuple(index)]), [0.5], colors="r", linewidths=0.7)
            ax.axis("off")
        axes[row, 0].set_title(f"{image_key} {data.shape}")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "real-t1w")
    parser.add_argument("--templates", type=Path, default=REPO / ".." / "shared" / "data" / "templates")
    parser.add_argument("--resolution", type=int, action="append", choices=[1, 2])
    parser.add_argument("--work", type=Path, default=None, help="nipype work dir (default: temporary)")
    parser.add_argument("--omp-nthreads", type=int, default=2)
    parser.add_argument("--png", type=Path, default=None, help="write one mosaic PNG per scan here")
    args = parser.parse_args(argv)
    resolutions = sorted(args.resolution or [2, 1], reverse=True)

    scratch = tempfile.TemporaryDirectory(prefix="hcld_check_")
    home = Path(scratch.name) / "templateflow"
    # TemplateFlow reads TEMPLATEFLOW_HOME once, on import: set it before anything imports it.
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    sys.path.insert(0, str(REPO))
    from nipype import config, logging

    config.update_config({"logging": {"workflow_level": "WARNING", "interface_level": "WARNING"},
                          "execution": {"remove_unnecessary_outputs": False}})
    logging.update_logging(config)
    prepare_templateflow(home, args.templates.resolve(), resolutions)
    work = args.work or Path(scratch.name) / "work"
    if args.png:
        args.png.mkdir(parents=True, exist_ok=True)

    scans = sorted(args.data.resolve().glob("*.nii*"))
    failures = 0
    for resolution in resolutions:
        print(f"\n== {TEMPLATE} res-{resolution:02d} ==")
        print(f"{'scan':40s} {'native cm3':>10s} {'Dice':>6s} {'NCC':>6s} {'out win':>7s} "
              f"{'low':>8s} {'high':>8s}  timings (s)")
        results = {}
        for t1w in scans:
            name = t1w.name.split(".")[0]
            result = run_scan(t1w, resolution, work / f"res-{resolution:02d}" / name, args.omp_nthreads)
            results[name] = result
            ok = (VOLUME_RANGE_CM3[0] <= result["native_cm3"] <= VOLUME_RANGE_CM3[1]
                  and result["dice"] >= MIN_DICE)
            failures += not ok
            steps = ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items() if v >= 0.5)
            print(f"{name:40s} {result['native_cm3']:10.0f} {result['dice']:6.3f} {result['ncc']:6.3f} "
                  f"{100 * result['outside_window']:6.2f}% {result['low']:8.1f} {result['high']:8.1f}  "
                  f"total {result['total_s']:.1f} ({steps}){'' if ok else '  FAIL'}", flush=True)
            if args.png:
                save_png(result, args.png / f"{name}_res-{resolution:02d}.png")
        for first, second in PAIRS:
            if first in results and second in results:
                a, b = results[first], results[second]
                dice = 2.0 * float((a["mask"] & b["mask"]).sum()) / float(a["mask"].sum() + b["mask"].sum())
                print(f"pair {first} / {second}: native volume ratio "
                      f"{a['native_cm3'] / b['native_cm3']:.3f}, template-space mask Dice {dice:.3f}")
    print(f"\n{'all scans pass' if not failures else f'{failures} scan(s) FAIL'} "
          f"(native volume {VOLUME_RANGE_CM3[0]:.0f}-{VOLUME_RANGE_CM3[1]:.0f} cm3, Dice >= {MIN_DICE})")
    scratch.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
