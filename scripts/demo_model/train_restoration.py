#!/usr/bin/env python
"""Train the restoration prior (:mod:`hcld_bids.model.restore`) on a training pack, resuming from a state.

Only the images of one site (``--clean-site``, the quietest and sharpest: siteA in the demo's packs) are used,
each re-rendered on every step at a random scanner (degraded) and at the same scanner without noise and blur
(the target); no image of any other site and no pair of scans of one head is needed. The state folder holds
one ``checkpoint.safetensors`` (weights, optimizer, step, random state; replaced at every save) and
``curve.csv`` (validation SSIM against steps and wall time). ``--bundle`` adds the trained network to a model
bundle (``restoration.safetensors`` and a ``restoration`` block in its manifest).

Validation: the ``--clean-site`` images of ``--val-pack``, each rendered at every built-in simulated site with
a fixed seed; the brain SSIM of the restored image to the clean rendering, beside the degraded one's.

    PYTHONPATH=$PWD python scripts/demo_model/train_restoration.py --pack DATA/pack-train \
        --val-pack DATA/pack-val --state STATE --steps 3000 --minutes 40
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_demo import load_pack  # noqa: E402

from hcld_bids.model.errors import CheckpointError  # noqa: E402
from hcld_bids.model.evaluation import masked_ssim  # noqa: E402
from hcld_bids.model.restore import RestorationNet, RestorationTrainer, degradation_pair, restore_volume  # noqa: E402
from hcld_bids.model.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from hcld_bids.simulate import SITES  # noqa: E402

CURVE_FIELDS = ("step", "wall_s", "loss", "val_degraded", "val_restored")


def site_images(pack: Path, site: str, limit: int | None = None):
    volumes, masks, sites, _ = load_pack(pack)
    keep = [i for i, s in enumerate(sites) if s == site][:limit]
    if not keep:
        raise SystemExit(f"{pack}: no image of site {site!r} (sites: {', '.join(sorted(set(sites)))}); "
                         "choose --clean-site")
    return [volumes[i] for i in keep], [masks[i] for i in keep]


def validation_set(volumes, masks, seed: int = 1234, realistic: bool = False):
    """(degraded, clean, mask) for every volume at every built-in site, fixed draws."""
    out = []
    for k, (vol, mask) in enumerate(zip(volumes, masks)):
        for j, effect in enumerate(SITES.values()):
            rng = np.random.default_rng([seed, k, j])
            degraded, clean = degradation_pair(vol, rng, site_effects=[effect], random_prob=0.0,
                                               realistic=realistic)
            out.append((degraded, clean, mask))
    return out


def validate(net, val) -> tuple[float, float]:
    before = [masked_ssim(d, c, m) for d, c, m in val]
    after = [masked_ssim(restore_volume(net, d, m), c, m) for d, c, m in val]
    return float(np.mean(before)), float(np.mean(after))


def _read(state: Path) -> dict | None:
    """The checkpoint of a restoration state (None without one); a damaged file is a one-line exit."""
    try:
        return load_checkpoint(state)
    except CheckpointError as exc:
        raise SystemExit(f"{state}: {exc}; remove the folder to start again") from None


def load_state(state: Path, trainer: RestorationTrainer, config: dict) -> float:
    """Resume ``trainer`` from ``state``; returns the wall seconds already spent."""
    payload = _read(state)
    if payload is None:
        return 0.0

    def network(c):  # where the weights started does not decide whether a state may be resumed
        return {k: v for k, v in (c or {}).items() if k != "init_from"}

    if network(payload.get("config")) != network(config):
        raise SystemExit(f"{state}: the state is of another network ({payload.get('config')}, asked {config}); "
                         "use another --state or the same --channels/--blocks")
    if "init_from" in (payload.get("config") or {}):  # resumed without --init-from: keep the record
        config["init_from"] = payload["config"]["init_from"]
    try:
        trainer.net.load_state_dict(payload["weights"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise SystemExit(f"{state}: the checkpoint is incomplete or damaged ({exc}); remove it to start "
                         "again") from None
    trainer.step = int(payload["step"])
    trainer.rng.bit_generator.state = json.loads(payload["generator"])
    return float(payload.get("wall_s", 0.0))


def save_state(state: Path, trainer: RestorationTrainer, config: dict, wall_s: float) -> None:
    save_checkpoint(state, {"config": config, "weights": trainer.net.state_dict(),
                            "optimizer": trainer.optimizer.state_dict(), "step": trainer.step,
                            "generator": json.dumps(trainer.rng.bit_generator.state), "wall_s": wall_s})


def load_network(state: Path) -> tuple[RestorationNet, dict] | None:
    """The trained network of a restoration state and its training record, or None when there is no state."""
    payload = _read(state)
    if payload is None:
        return None
    config = payload.get("config") or {}
    net = RestorationNet(config.get("channels", 32), config.get("blocks", 4))
    try:
        net.load_state_dict(payload["weights"])
    except (KeyError, RuntimeError) as exc:
        raise SystemExit(f"{state}: the restoration checkpoint does not fit its network ({exc}); train it "
                         "again") from None
    return net, {"steps": int(payload["step"]), "wall_s": round(float(payload.get("wall_s", 0.0)), 1),
                 "config": config, "device": "cpu",
                 "how": "scripts/demo_model/train_restoration.py on the clean site's images of the training pack"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", type=Path, required=True)
    p.add_argument("--val-pack", type=Path, required=True)
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--clean-site", default="siteA")
    p.add_argument("--val-limit", type=int, default=4, help="validation images of the clean site (each x 4 sites)")
    p.add_argument("--steps", type=int, default=3000, help="length of the learning-rate schedule")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--realistic", action="store_true",
                   help="degrade as a 1 mm scan after preprocessing looks (hcld_bids.model.restore.degradation_pair)")
    p.add_argument("--clean-prob", type=float, default=0.0,
                   help="share of training pairs without any degradation (clean in, clean out)")
    p.add_argument("--ssim-weight", type=float, default=0.0,
                   help="weight w of (1 - SSIM) in the loss, (1 - w) L1 + w (1 - SSIM) (0: L1 only)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="a fresh state starts from this state's weights (new optimizer and schedule)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bundle", type=Path, default=None, help="add the trained network to this model bundle")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = {"channels": args.channels, "blocks": args.blocks, "batch": args.batch, "patch": args.patch,
              "lr": args.lr, "steps": args.steps, "clean_site": args.clean_site, "realistic": args.realistic}
    if args.clean_prob:
        config["clean_prob"] = args.clean_prob
    if args.ssim_weight:
        config["ssim_weight"] = args.ssim_weight
    volumes, masks = site_images(args.pack, args.clean_site)
    val = validation_set(*site_images(args.val_pack, args.clean_site, args.val_limit), realistic=args.realistic)
    net = RestorationNet(args.channels, args.blocks)
    trainer = RestorationTrainer(net, volumes, masks, steps=args.steps, batch=args.batch, patch=args.patch,
                                 lr=args.lr, realistic=args.realistic, clean_prob=args.clean_prob,
                                 ssim_weight=args.ssim_weight)
    if args.init_from is not None:  # a new state starts from these weights; a saved state replaces them below
        start_from = load_network(args.init_from)
        if start_from is None:
            raise SystemExit(f"{args.init_from}: no restoration state to start from; check --init-from")
        if start_from[0].config != net.config:
            raise SystemExit(f"{args.init_from}: a network of another size ({start_from[0].config}); "
                             "use the same --channels/--blocks")
        net.load_state_dict(start_from[0].state_dict())
        config["init_from"] = {"state": str(args.init_from), "steps": start_from[1]["steps"]}
    args.state.mkdir(parents=True, exist_ok=True)
    spent = load_state(args.state, trainer, config)
    curve_path = args.state / "curve.csv"
    start = time.monotonic()
    deadline = (lambda: time.monotonic() - start > 60 * args.minutes) if args.minutes is not None else None
    losses: list[float] = []

    def log(step: int, loss: float) -> None:
        losses.append(loss)
        if step % args.eval_every == 0 or step == args.steps:
            before, after = validate(net, val)
            wall = spent + time.monotonic() - start
            new = not curve_path.exists()
            with open(curve_path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, CURVE_FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow({"step": step, "wall_s": round(wall, 1), "loss": round(float(np.mean(losses)), 5),
                                 "val_degraded": round(before, 4), "val_restored": round(after, 4)})
            losses.clear()
            print(f"step {step}/{args.steps}  {wall / 60:.1f} min  loss {loss:.4f}  "
                  f"validation SSIM {before:.4f} -> {after:.4f}", flush=True)
            save_state(args.state, trainer, config, wall)

    trainer.run(deadline=deadline, on_step=log)
    wall = spent + time.monotonic() - start
    save_state(args.state, trainer, config, wall)
    before, after = validate(net, val)
    print(f"stopped at step {trainer.step}/{args.steps} after {wall / 60:.1f} min; validation SSIM "
          f"{before:.4f} -> {after:.4f}")
    if args.bundle is not None:
        from hcld_bids.model.bundle import add_restoration

        record = {"steps": trainer.step, "wall_s": round(wall, 1), "config": config, "device": "cpu",
                  "validation_ssim": {"degraded": round(before, 4), "restored": round(after, 4)},
                  "command": " ".join(sys.argv)}
        add_restoration(args.bundle, net, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
