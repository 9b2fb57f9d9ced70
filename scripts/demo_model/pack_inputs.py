#!/usr/bin/env python
"""Pack the model-grid training inputs exported by the train level's preprocessing into one file.

The train level preprocesses every T1w (``hcld-bids BIDS_DIR OUT train -w WORK``; the volumes land in
``WORK/train/inputs``). This script collects them with their sites into a compressed ``.npz`` (float16
intensities, or 8-bit with ``--uint8``, which keeps a pack of the whole training set small enough to travel
to a GPU node; bit-packed masks) and writes ``manifest_base.json`` (preprocessing specification, per-site
intensity histograms, data summary) so that :mod:`train_on_inputs` can train on a machine without the
neuroimaging stack (e.g. a GPU node with only PyTorch).

    PYTHONPATH=$PWD python scripts/demo_model/pack_inputs.py BIDS_DIR WORK_DIR DEST_DIR [--site-column site] \
        [--participant-label IXI033 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bids_dir", type=Path)
    ap.add_argument("work_dir", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--site-column", default="site")
    ap.add_argument("--uint8", action="store_true",
                    help="store intensities as round(255 x) in 8 bits (quantization step 1/255) instead of float16")
    ap.add_argument("--participant-label", nargs="+", default=None,
                    help="pack these participants only (with or without 'sub-'; default: all)")
    args = ap.parse_args(argv)

    from hcld_bids.bids.layout import collect_t1w, open_layout
    from hcld_bids.bids.sites import resolve_sites
    from hcld_bids.preproc.spec import preprocessing_spec
    from hcld_bids.workflows.base import _t1w_label
    from hcld_bids.levels.train import DEFAULT_TEMPLATE, _data_summary, site_targets

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_demo import save_pack

    layout = open_layout(args.bids_dir, database_dir=None, work_dir=args.work_dir, validate=False)
    records = resolve_sites(collect_t1w(layout), args.bids_dir, site_column=args.site_column)
    if args.participant_label:
        wanted = {p.removeprefix("sub-") for p in args.participant_label}
        records = [r for r in records if r.subject in wanted]
    inputs = args.work_dir / "train" / "inputs"
    kept, volumes, masks = [], [], []
    for record in records:
        label = _t1w_label(record)
        t1w, mask = inputs / f"{label}_t1w.nii.gz", inputs / f"{label}_mask.nii.gz"
        if not (t1w.is_file() and mask.is_file()):
            print(f"skipped {label}: not preprocessed")
            continue
        kept.append(record)
        volumes.append(np.asarray(nib.load(t1w).dataobj, dtype=np.float32))
        masks.append(np.asarray(nib.load(mask).dataobj) > 0)
    sites = [r.site for r in kept]
    args.dest.mkdir(parents=True, exist_ok=True)
    save_pack(args.dest, volumes, masks, sites, [_t1w_label(r) for r in kept], uint8=args.uint8)
    summary = _data_summary(kept, sites)
    targets = site_targets(volumes, masks, sites)
    base = {
        "preprocessing": preprocessing_spec(DEFAULT_TEMPLATE, 2),
        "sites": {s: {"n_images": summary["sites"][s], **targets[s]} for s in summary["sites"]},
        "training": {"bids_dir": str(args.bids_dir), "data": summary,
                     "subjects": sorted({r.subject for r in kept})},
    }
    (args.dest / "manifest_base.json").write_text(json.dumps(base, indent=1))
    print(f"packed {len(kept)} image(s) from {len(set(sites))} site(s) into {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
