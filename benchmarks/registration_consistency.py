#!/usr/bin/env python
"""How consistently the preprocessing registers the same head scanned at several sites.

The simulated traveling subjects (``scripts/make_ixi_sites.py``) render one IXI head at every site on the
same voxels, in the same position, so the ideal template transforms of a head's sessions are identical; any
difference is the registration reacting to the scanner's noise, blur and contrast. It moves the same anatomy
to different places of the model grid, which every harmonizer then pays for when its output is compared
with the head's scan at the target site.

For each head, the template's brain voxels (every 7th) are mapped through each session's forward transform
(as the train or participant level wrote it into its work directory); the spread of a session is the RMS
distance (mm) of its points from the mean of the head's sessions. Printed per site and overall.

    PYTHONPATH=$PWD python benchmarks/registration_consistency.py WORK_DIR [--participant-label IXI633 ...] \
        [--out ROWS.tsv]
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_SESSION = re.compile(r"sub_(?P<sub>[^_]+)_wf/t1w_ses_(?P<site>[^_]+)_wf/")


def transforms(work_dir: Path) -> dict[str, dict[str, Path]]:
    """``{subject: {session: forward transform}}`` found under a nipype work directory of hcld-bids."""
    found = defaultdict(dict)
    for path in sorted(Path(work_dir).glob("hcld_bids_wf/sub_*_wf/t1w_ses_*_wf/anat_preproc_wf/register/"
                                           "T1w_to_template_fwd_xfm.mat")):
        m = _SESSION.search(path.as_posix())
        if m:
            found[m["sub"]][m["site"]] = path
    return dict(found)


def brain_points(template_mask, step: int = 7) -> np.ndarray:
    """World coordinates (mm) of every ``step``-th voxel of the template brain mask (a nibabel image)."""
    mask = np.asarray(template_mask.dataobj) > 0.5
    idx = np.argwhere(mask)[::step]
    return idx @ template_mask.affine[:3, :3].T + template_mask.affine[:3, 3]


def map_points(points_ras: np.ndarray, transform: Path) -> np.ndarray:
    """Template points (RAS mm) mapped through an ANTs forward transform (ANTs works in LPS)."""
    import ants
    import pandas as pd

    lps = points_ras * np.array([-1.0, -1.0, 1.0])
    moved = ants.apply_transforms_to_points(3, pd.DataFrame(lps, columns=["x", "y", "z"]), [str(transform)])
    return moved[["x", "y", "z"]].to_numpy() * np.array([-1.0, -1.0, 1.0])


def spread(points: np.ndarray, per_session: dict[str, Path]) -> dict[str, float]:
    """RMS distance (mm) of each session's mapped points from the mean over the head's sessions."""
    mapped = {site: map_points(points, path) for site, path in per_session.items()}
    mean = np.mean(list(mapped.values()), axis=0)
    return {site: float(np.sqrt(np.mean(np.sum((p - mean) ** 2, axis=1)))) for site, p in mapped.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work_dir", type=Path, help="work directory of a train or participant run (-w)")
    ap.add_argument("--participant-label", nargs="+", help="these heads only (default: every head seen at 2+ sites)")
    ap.add_argument("--template", default="MNI152NLin6Asym")
    ap.add_argument("--resolution", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write one row per session (TSV)")
    args = ap.parse_args(argv)
    import nibabel as nib

    from hcld_bids.templates import check_templates

    found = transforms(args.work_dir)
    if args.participant_label:
        wanted = {p.removeprefix("sub-") for p in args.participant_label}
        found = {s: v for s, v in found.items() if s in wanted}
    found = {s: v for s, v in found.items() if len(v) > 1}
    if not found:
        ap.error(f"no head with two or more registered sessions under {args.work_dir}/hcld_bids_wf")
    points = brain_points(nib.load(check_templates(args.template, args.resolution)["brain_mask"]))
    rows = []
    for sub, per_session in sorted(found.items()):
        for site, value in spread(points, per_session).items():
            rows.append({"subject": sub, "site": site, "rms_mm": round(value, 4)})
        print(f"  {sub}: " + "  ".join(f"{r['site']} {r['rms_mm']:.2f}" for r in rows if r["subject"] == sub),
              flush=True)
    by_site = defaultdict(list)
    for r in rows:
        by_site[r["site"]].append(r["rms_mm"])
    print(f"{len(found)} heads; RMS distance from the head's mean placement (mm): "
          + "  ".join(f"{site} {np.mean(v):.2f}" for site, v in sorted(by_site.items()))
          + f"  all {np.mean([r['rms_mm'] for r in rows]):.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["subject", "site", "rms_mm"], delimiter="\t")
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
