#!/usr/bin/env python
"""A pack of ``pack_inputs.py`` at a coarser grid: every volume averaged over ``factor``^3 blocks, its brain mask
the blocks at least half inside the brain, both zero-padded (centred) to ``--pad-to``; the site histograms of
the manifest base recomputed at the new grid. For the issue-15 question "compute or method?": the demo recipe
run to convergence at 4 mm, 8x cheaper per voxel than the 2 mm model grid.

    PYTHONPATH=$PWD python scripts/demo_model/coarsen_pack.py PACK DEST [--factor 2] [--pad-to 48 48 48]

A 2 mm pack (80x96x80) becomes 40x48x40 at 4 mm, padded to 48^3 so that the demo UNet (patch 2, two
downsamplings) divides its 24^3 latent. Only numpy is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def block_mean(vol: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``^3 blocks (each axis must divide)."""
    d, h, w = vol.shape
    if d % factor or h % factor or w % factor:
        raise ValueError(f"grid {vol.shape} is not divisible by {factor}")
    return vol.reshape(d // factor, factor, h // factor, factor, w // factor, factor).mean(axis=(1, 3, 5))


def pad_centred(vol: np.ndarray, shape) -> np.ndarray:
    if any(s < v for s, v in zip(shape, vol.shape)):
        raise ValueError(f"--pad-to {tuple(shape)} is smaller than the coarse grid {vol.shape}")
    before = [(s - v) // 2 for s, v in zip(shape, vol.shape)]
    return np.pad(vol, [(b, s - v - b) for b, s, v in zip(before, shape, vol.shape)])


def coarsen(volumes, masks, factor: int, pad_to=None):
    out_v, out_m = [], []
    for vol, mask in zip(volumes, masks):
        v = block_mean(np.asarray(vol, np.float32) * mask, factor)
        m = block_mean(mask.astype(np.float32), factor) >= 0.5
        v = np.where(m, v, 0.0).astype(np.float32)
        if pad_to:
            v, m = pad_centred(v, pad_to), pad_centred(m, pad_to)
        out_v.append(v)
        out_m.append(m)
    return out_v, out_m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pack", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--pad-to", type=int, nargs=3, default=None, metavar=("D", "H", "W"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_demo import load_pack, save_pack

    from hcld_bids.levels.train import site_targets

    if not (args.pack / "inputs.npz").is_file():
        raise SystemExit(f"{args.pack}: not a pack (no inputs.npz); make one with pack_inputs.py")
    volumes, masks, sites, labels = load_pack(args.pack)
    try:
        coarse, coarse_masks = coarsen(volumes, masks, args.factor, args.pad_to)
    except ValueError as exc:
        raise SystemExit(f"{args.pack}: {exc}") from None
    args.dest.mkdir(parents=True, exist_ok=True)
    shape = coarse[0].shape
    save_pack(args.dest, coarse, coarse_masks, sites, labels)
    base_path = args.pack / "manifest_base.json"
    base = json.loads(base_path.read_text()) if base_path.is_file() else {}
    targets = site_targets(coarse, coarse_masks, sites)
    for site, entry in (base.get("sites") or {}).items():
        entry.update(targets[site])
    spec = dict(base.get("preprocessing") or {})
    spec["resolution"] = int(spec.get("resolution", 2)) * args.factor
    spec["grid"] = {"shape": list(shape), "coarsened_from": (spec.get("grid") or {}).get("shape"),
                    "factor": args.factor, "padded_to": args.pad_to}
    base["preprocessing"] = spec
    (args.dest / "manifest_base.json").write_text(json.dumps(base, indent=1))
    print(f"{len(coarse)} volumes {tuple(volumes[0].shape)} -> {shape} (factor {args.factor}) in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
