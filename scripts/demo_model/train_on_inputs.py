#!/usr/bin/env python
"""Train an HCLD bundle on packed model-grid inputs (see pack_inputs.py), with a wall-clock budget per stage.

Stage 1 (autoencoder) and stage 2 (conditional latent diffusion with the HCLD losses) run through
:mod:`hcld_bids.model.training`, the engine of the ``train`` level, with that level's default networks;
each stage stops at its time budget (after a checkpoint) and the bundle is written with the number of
optimizer steps each stage reached. Needs only PyTorch, numpy, safetensors and tqdm.

    PYTHONPATH=$PWD python scripts/demo_model/train_on_inputs.py PACK_DIR BUNDLE_DIR \
        [--ae-minutes 4] [--ldm-minutes 4] [--work WORK]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def load_pack(pack: Path):
    data = np.load(pack / "inputs.npz")
    shape = tuple(int(s) for s in data["shape"])
    volumes = [v.astype(np.float32) for v in data["volumes"]]
    masks = [m.astype(bool) for m in np.unpackbits(data["masks"], axis=-1, count=shape[-1])]
    return volumes, masks, [str(s) for s in data["sites"]]


def steps_done(history: Path) -> int:
    with open(history) as fh:
        rows = list(csv.DictReader(fh))
    return int(rows[-1]["step"]) if rows else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pack", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hcld-demo-train"))
    ap.add_argument("--ae-minutes", type=float, default=4.0)
    ap.add_argument("--ldm-minutes", type=float, default=4.0)
    ap.add_argument("--ae-batch", type=int, default=4)
    ap.add_argument("--ldm-batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr-ae", type=float, default=2e-4)
    ap.add_argument("--lr-ldm", type=float, default=1e-4)
    ap.add_argument("--prototype-condition-prob", type=float, default=0.5)
    ap.add_argument("--ae-channels", type=int, nargs=3, default=(16, 32, 32))
    ap.add_argument("--unet-channels", type=int, nargs=3, default=(16, 32, 32))
    ap.add_argument("--tiny", action="store_true", help="tiny networks (a check of this script on a CPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from hcld_bids.model.bundle import save_bundle
    from hcld_bids.model.training import AutoencoderTrainConfig, LDMTrainConfig, train_autoencoder, train_ldm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    volumes, masks, sites = load_pack(args.pack)
    base = json.loads((args.pack / "manifest_base.json").read_text())
    print(f"{len(volumes)} volumes {volumes[0].shape}, sites {sorted(set(sites))}, device {device}", flush=True)
    if args.tiny:
        args.ae_channels, args.unet_channels = (8, 8, 8), (8, 8, 8)
    ae_arch = dict(channels=tuple(args.ae_channels), latent_channels=6, norm_groups=min(8, min(args.ae_channels)))
    unet_arch = dict(channels=tuple(args.unet_channels), in_channels=12, out_channels=6,
                     norm_groups=min(32, min(args.unet_channels)), head_channels=min(64, max(args.unet_channels)))
    steps_per_epoch_ae = max(1, len(volumes) // args.ae_batch)
    ae_cfg = AutoencoderTrainConfig(
        autoencoder=ae_arch, epochs=10_000, batch_size=args.ae_batch, lr=args.lr_ae, patch_size=(args.patch,) * 3,
        checkpoint_every=200, seed=args.seed, progress=False, adv_warmup_epochs=5.0,
    )
    ldm_cfg = LDMTrainConfig(
        unet=unet_arch, epochs=10_000, batch_size=args.ldm_batch, grad_accum=1, lr=args.lr_ldm,
        checkpoint_every=200, seed=args.seed, progress=False, adv_burn_in_epochs=5.0,
        prototype_condition_prob=args.prototype_condition_prob,
    )
    if args.work.exists():
        shutil.rmtree(args.work)
    def run_stage(fn, cfg, name, minutes, **kwargs):
        """Run one stage; if mixed precision fails on this GPU, say so and run it again in float32."""
        try:
            return fn(cfg, args.work / name, minutes), cfg
        except Exception:  # noqa: BLE001 - reported, then retried once without autocast
            if device != "cuda" or not cfg.amp:
                raise
            import dataclasses
            import traceback

            traceback.print_exc()
            print(f"{name}: failed with autocast; again in float32", flush=True)
            shutil.rmtree(args.work / name, ignore_errors=True)
            cfg = dataclasses.replace(cfg, amp=False)
            return fn(cfg, args.work / name, minutes), cfg

    t0 = time.time()
    ae, ae_cfg = run_stage(lambda cfg, wd, minutes: train_autoencoder(volumes, cfg, wd, device=device,
                                                                      time_limit_s=60 * minutes),
                           ae_cfg, "stage1", args.ae_minutes)
    ae_time = time.time() - t0
    ae_steps = steps_done(ae.history)
    print(f"stage 1: {ae_steps} steps in {ae_time:.0f} s ({ae_steps / steps_per_epoch_ae:.1f} epochs), "
          f"scale factor {ae.scale_factor:.4f}", flush=True)
    t1 = time.time()
    ldm, ldm_cfg = run_stage(lambda cfg, wd, minutes: train_ldm(volumes, sites, cfg, wd, autoencoder=ae.autoencoder,
                                                                scale_factor=ae.scale_factor, masks=masks,
                                                                device=device, time_limit_s=60 * minutes),
                             ldm_cfg, "stage2", args.ldm_minutes)
    ldm_time = time.time() - t1
    ldm_steps = steps_done(ldm.history)
    print(f"stage 2: {ldm_steps} steps in {ldm_time:.0f} s", flush=True)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    training = dict(base.get("training", {}))
    training.update({
        "how": "hcld_bids.model.training (the train level's engine) on the train level's preprocessed inputs, "
               "scripts/demo_model/train_on_inputs.py, each stage stopped at a wall-clock budget",
        "device": gpu,
        "stage1": {**ae_cfg.to_dict(), "steps_done": ae_steps, "seconds": round(ae_time, 1)},
        "stage2": {**ldm_cfg.to_dict(), "steps_done": ldm_steps, "seconds": round(ldm_time, 1)},
        "torch": torch.__version__,
    })
    manifest = {**base, "name": args.bundle.name, "training": training}
    save_bundle(args.bundle, ae.autoencoder.cpu(), ldm.unet.cpu(), ae.scale_factor,
                {k: v for k, v in ldm.prototypes.items()}, manifest, schedule=ldm.schedule, overwrite=True)
    for stage in ("stage1", "stage2"):
        shutil.copyfile(args.work / stage / "history.csv", args.bundle.parent / f"{stage}_history.csv")
    print(f"bundle written to {args.bundle}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
