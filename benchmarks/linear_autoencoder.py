#!/usr/bin/env python
"""The best linear autoencoder of a model grid: what k principal components of 2x2x2 voxel blocks reconstruct.

A space-to-depth autoencoder with ``k`` latent channels at half resolution keeps ``k`` numbers per 2x2x2 block
of 8 voxels. The best *linear* code of that size is the first ``k`` principal components of the blocks. This
benchmark fits them on the training pack (``AutoencoderKL.init_linear_skip``, the same code that starts a
``linear_skip`` autoencoder; its convolutional branches are zero at that point, so the network *is* the linear
code) and prints the held-out reconstruction SSIM (brain mask, as the training curve measures it) for each
``k``, beside a trained bundle's autoencoder when ``--bundle`` is given. A trained network of that latent size
that scores below the linear code of the same size has not learned what a projection gets for free.

    PYTHONPATH=$PWD python benchmarks/linear_autoencoder.py --pack DATA/pack-train --val-pack DATA/pack-val \
        [--val-limit 16] [--channels 1 2 3 4 5 6 8] [--bundle BUNDLE ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "demo_model"))

from train_demo import load_pack, reconstruction_ssim  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, required=True, help="training pack (pack_inputs.py) to fit the components on")
    ap.add_argument("--val-pack", type=Path, required=True, help="held-out pack to score on")
    ap.add_argument("--val-limit", type=int, default=16, help="score the first N held-out images (default 16)")
    ap.add_argument("--channels", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8],
                    help="latent channels (components per 2x2x2 block, at most 8)")
    ap.add_argument("--bundle", type=Path, nargs="*", default=[], help="trained bundles to score beside them")
    args = ap.parse_args(argv)
    if any(not 1 <= k <= 8 for k in args.channels):
        ap.error("--channels: a 2x2x2 block holds 8 values; choose 1 to 8 components")

    from hcld_bids.model import AutoencoderKL
    from hcld_bids.model.bundle import load_bundle

    train, _, _, _ = load_pack(args.pack)
    val, masks, _, _ = load_pack(args.val_pack)
    val, masks = val[: args.val_limit], masks[: args.val_limit]
    print(f"{len(train)} training images, {len(val)} held-out images, grid {val[0].shape}")
    print("| autoencoder | latent channels | held-out reconstruction SSIM | seconds |")
    print("| --- | --- | --- | --- |")
    for k in args.channels:
        t0 = time.perf_counter()
        ae = AutoencoderKL(channels=[8], latent_channels=k, num_res_blocks=1, attention_levels=[False],
                           norm_groups=4, patch_size=2, mid_attention=False, linear_skip=True)
        info = ae.init_linear_skip(train)
        with torch.no_grad():
            score = reconstruction_ssim(ae, val, masks, torch.device("cpu"))
        print(f"| linear (first {k} principal components, {100 * info['explained_variance']:.1f} % of the block "
              f"variance) | {k} | {score:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
    for path in args.bundle:
        t0 = time.perf_counter()
        bundle = load_bundle(path)
        with torch.no_grad():
            score = reconstruction_ssim(bundle.autoencoder, val, masks, torch.device("cpu"))
        print(f"| trained: {path} | {bundle.autoencoder.latent_channels} | {score:.4f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
