#!/usr/bin/env python
"""Does the diffusion model denoise? Its one-step clean-latent estimate against doing nothing, per timestep.

Every harmonization regime that moves the latent relies on the UNet's estimate of the clean latent from a noisy
one. For held-out images (a pack with their sites), each latent ``z = sf * E(x)`` is noised to timestep ``t``
with fixed noise, ``z_t = sqrt(abar) z + sqrt(1 - abar) eps``, and the UNet (conditioned on the image's own site
prototype) predicts ``eps``. Per ``t`` the script prints the noise MSE and the brain SSIM to the image's own
reconstruction ``D(E(x))`` of three decoded latents:

* ``one-step estimate``: ``(z_t - sqrt(1 - abar) eps_hat) / sqrt(abar)``, what SDEdit with one step returns;
* ``noisy, undenoised``: ``z_t / sqrt(abar)`` (the noise left in, the floor a denoiser must beat);
* ``oracle``: the same formula with the true noise, i.e. ``z`` itself (1 up to rounding; a check).

A UNet that helps the harmonizer has its estimate well above the undenoised floor at the small ``t`` that the
regimes use.

Does it read its condition? The same noisy latent is also given the prototype of every other trained site.
``noise MSE, other sites`` is the noise MSE under those conditions (a model that uses its condition does worse
with the wrong site's), and ``condition effect`` is ``|eps_other - eps_own| / |eps_own - eps|``: how far the
prediction moves when the site changes, relative to its own error. Translation between sites (dual conditions,
guidance) can only come from this difference; near 0 the model ignores the condition.

    PYTHONPATH=$PWD python benchmarks/denoise_by_timestep.py --val-pack DATA/pack-val --bundle BUNDLE [BUNDLE ...] \
        [--limit 8] [--timesteps 10 20 50 100 250 500]
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

from train_demo import load_pack  # noqa: E402


@torch.no_grad()
def measure(bundle, volumes, masks, sites, timesteps, seed: int = 0) -> list[dict]:
    """One row per timestep: noise MSE and the mean brain SSIM of each decoded latent to ``D(E(x))``."""
    from hcld_bids.model.evaluation import masked_ssim
    from hcld_bids.model.prototypes import encode_scaled

    ae, unet, schedule, sf = bundle.autoencoder.eval(), bundle.unet.eval(), bundle.schedule, bundle.scale_factor

    def decode(z):
        return ae.decode(z / sf).clamp(0, 1)[0, 0].float().numpy()

    rows = {int(t): {"t": int(t), "mse": [], "estimate": [], "undenoised": [], "oracle": [], "mse_other": [],
                     "effect": []} for t in timesteps}
    for i, (vol, mask, site) in enumerate(zip(volumes, masks, sites)):
        if site not in bundle.prototypes:
            continue
        z = encode_scaled(ae, vol, sf)
        recon = decode(z)
        cond = bundle.prototypes[site]
        for t in rows:
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed + 1000 * i + t))
            abar = float(schedule.alphas_cumprod[t])
            zt = schedule.add_noise(z, noise, t)
            eps = unet(zt, t, cond).float()
            row = rows[t]
            row["mse"].append(float(((eps - noise) ** 2).mean()))
            err = float((eps - noise).norm())
            for other in sorted(bundle.prototypes):
                if other != site:
                    eps_o = unet(zt, t, bundle.prototypes[other]).float()
                    row["mse_other"].append(float(((eps_o - noise) ** 2).mean()))
                    row["effect"].append(float((eps_o - eps).norm()) / max(err, 1e-12))
            for key, e in (("estimate", eps), ("undenoised", torch.zeros_like(eps)), ("oracle", noise)):
                z0 = (zt - (1.0 - abar) ** 0.5 * e) / abar ** 0.5
                row[key].append(masked_ssim(decode(z0) * mask, recon * mask, mask))
    return [{k: (float(np.mean(v)) if isinstance(v, list) else v) for k, v in r.items()} for r in rows.values()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val-pack", type=Path, required=True, help="held-out pack (pack_inputs.py) with sites")
    ap.add_argument("--bundle", type=Path, nargs="+", required=True)
    ap.add_argument("--limit", type=int, default=8, help="first N images of the pack (default 8)")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[10, 20, 50, 100, 250, 500])
    args = ap.parse_args(argv)

    from hcld_bids.model.bundle import load_bundle

    volumes, masks, sites, _ = load_pack(args.val_pack)
    volumes, masks, sites = volumes[: args.limit], masks[: args.limit], sites[: args.limit]
    for path in args.bundle:
        t0 = time.perf_counter()
        bundle = load_bundle(path)
        bad = [t for t in args.timesteps if not 0 <= t < bundle.schedule.num_train_timesteps]
        if bad:
            ap.error(f"--timesteps {bad} outside the bundle's schedule (0..{bundle.schedule.num_train_timesteps - 1})")
        rows = measure(bundle, volumes, masks, sites, args.timesteps)
        print(f"\n{path} ({len(volumes)} images; SSIM to D(E(x)) in the brain)")
        print("| t | abar | noise MSE | noise MSE, other sites | condition effect | one-step estimate | "
              "noisy, undenoised | oracle |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            abar = float(bundle.schedule.alphas_cumprod[r["t"]])
            print(f"| {r['t']} | {abar:.3f} | {r['mse']:.3f} | {r['mse_other']:.3f} | {r['effect']:.3f} | "
                  f"{r['estimate']:.3f} | {r['undenoised']:.3f} | {r['oracle']:.3f} |", flush=True)
        print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
