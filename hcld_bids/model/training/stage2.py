"""Stage 2: train the conditional latent diffusion UNet with the HCLD losses on cached latents.

One micro-batch, for each source latent ``z_s`` (site a):

* pick a target site b (another site; the own site with ``same_site_prob``) and a real latent ``z_b`` of
  it; the condition ``c`` is ``z_b`` or, with ``prototype_condition_prob``, the prototype of site b
* ``z_f = AdaIN(z_s, c)`` (prototype conditions impose the prototype's stored per-image statistics)
* ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``z_t = sqrt(abar_t) z_f + sqrt(1 - abar_t) eps``
* ``eps_hat = UNet(concat(z_t, c), t)``, ``z0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``
* losses: noise MSE, content ``|IN(z_s) - IN(z0_hat)|^2``, style ``|G(z0_hat) - G(z_b)|^2`` (or channel
  statistics), adversarial ``BCE(D(z0_hat), real)`` after the burn-in, and the image-gradient loss between
  the source image and the decoded ``z0_hat / sf`` (a random latent crop of ``grad_crop`` voxels, or the
  whole latent) inside the brain mask
* the style discriminator learns real = ``z_b``, fake = ``z_s`` at every step.

With ``latent_crop`` the step works on one random cube of the latent grid (the same cube of source,
condition, real target and noise); with ``timestep_focus`` part of the timesteps is drawn from the low-noise
end, where light inference regimes query the network.

The style targets are real latents even when the condition is a prototype: a prototype is a mean of many
latents and is smoother than any real latent of its site.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import losses
from ..ddim import NoiseSchedule
from ..fusion import adain, channel_stats
from ..prototypes import SitePrototype, encode_scaled, prototype_from_latents
from ..unet import DiffusionUNet, condition_style
from .config import LDMTrainConfig
from .data import random_crop_box, scale_box, volume_tensor
from .distributed import DistContext, setup, unwrap
from .loop import HISTORY, TrainingRun

LOGGER = logging.getLogger("hcld_bids.model")

LATENT_CACHE = "latents.safetensors"


@dataclass
class LDMResult:
    unet: DiffusionUNet
    discriminator: losses.LatentStyleDiscriminator | None  # None when trained without the adversarial term
    prototypes: dict[str, SitePrototype]
    schedule: NoiseSchedule
    history: Path
    complete: bool


def _state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_latents(autoencoder, volumes: Sequence, scale_factor: float, workdir, device) -> torch.Tensor:
    """Scaled latents ``(n, C, d, h, w)`` of ``volumes``, encoded once and kept in ``workdir``."""
    path = Path(workdir) / LATENT_CACHE
    key = {"autoencoder": _state_digest(autoencoder), "scale_factor": repr(float(scale_factor)),
           "n": str(len(volumes))}
    if path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                if f.metadata() == key:
                    return load_file(str(path))["latents"]
        except Exception as err:  # noqa: BLE001 - a cache: whatever is wrong with it, encode again
            LOGGER.warning("the latent cache %s is unreadable (%s); encoding the training images again", path,
                           " ".join(str(err).split())[:200])
    z = torch.cat([encode_scaled(autoencoder, volumes[i], scale_factor, device).cpu() for i in range(len(volumes))])
    Path(workdir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"latents": z.contiguous()}, str(tmp), metadata=key)
    tmp.replace(path)
    return z


class _Stage2(TrainingRun):
    stage = "ldm"

    def __init__(self, latents: torch.Tensor, sites: Sequence[str], cfg: LDMTrainConfig, workdir, ctx: DistContext,
                 autoencoder, scale_factor: float | None, volumes, masks, prototypes) -> None:
        super().__init__(cfg, workdir, ctx, latents.shape[0])
        if len(sites) != latents.shape[0]:
            raise ValueError(f"{len(sites)} site labels for {latents.shape[0]} latents")
        self.latents = latents.float()
        self.sites = list(sites)
        self.site_names = sorted(set(self.sites))
        if cfg.target_site is not None and cfg.target_site not in self.site_names:
            from ..errors import UnknownSiteError

            raise UnknownSiteError(f"target site {cfg.target_site!r} has no training image; sites: "
                                   f"{', '.join(self.site_names)}")
        self.by_site = {s: [i for i, x in enumerate(self.sites) if x == s] for s in self.site_names}
        self.prototypes = prototypes or {s: prototype_from_latents(self.latents[idx]) for s, idx in self.by_site.items()}
        self.volumes, self.masks = volumes, masks
        self.scale_factor = scale_factor
        if cfg.grad_weight > 0:
            if autoencoder is None or volumes is None or scale_factor is None:
                raise ValueError("the image-gradient loss (grad_weight > 0) needs the autoencoder, the volumes and "
                                 "the scale factor")
            self.ae = autoencoder.to(self.device).eval().requires_grad_(False)
        self.schedule = NoiseSchedule(**cfg.noise_schedule)
        if cfg.latent_crop and cfg.grad_weight > 0:
            raise ValueError("latent_crop and the image-gradient loss (grad_weight > 0) do not combine; set one")
        if cfg.timestep_focus is not None and not 0 < cfg.timestep_focus <= self.schedule.num_train_timesteps:
            raise ValueError(f"timestep_focus must be in 1..{self.schedule.num_train_timesteps}")
        torch.manual_seed(cfg.seed)
        ucfg = dict(cfg.unet)
        ucfg.setdefault("in_channels", 2 * latents.shape[1])
        ucfg.setdefault("out_channels", latents.shape[1])
        unet = DiffusionUNet(**ucfg).to(self.device)
        self.unet = ctx.wrap(unet)
        self.models = {"unet": self.unet}
        self.optimizers = {"unet": torch.optim.Adam(self.unet.parameters(), lr=cfg.lr)}
        self.disc = None
        if cfg.adv_weight > 0:  # without the adversarial term there is no style discriminator to train or keep
            disc = losses.LatentStyleDiscriminator(latents.shape[1], tuple(cfg.disc_channels)).to(self.device)
            self.disc = ctx.wrap(disc)
            self.models["discriminator"] = self.disc
            self.optimizers["discriminator"] = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr,
                                                                betas=tuple(cfg.disc_betas))
        self.ema_model = "unet"
        self.schedulers = {k: self.lr_schedule(o) for k, o in self.optimizers.items()}

    def _sync(self, model, last: bool):
        return contextlib.nullcontext() if last or not self.ctx.enabled else model.no_sync()

    def _pairs(self, indices: list[int], gen: torch.Generator):
        """For each source item: (condition latent, (mean, std) for fusion, real target latent)."""
        conds, stats, reals = [], [], []
        for i in indices:
            a = self.sites[i]
            others = [s for s in self.site_names if s != a]
            if self.cfg.target_site is not None:
                b = self.cfg.target_site  # one-target training: every condition comes from that site
            elif not others or float(torch.rand((), generator=gen)) < self.cfg.same_site_prob:
                b = a
            else:
                b = others[int(torch.randint(len(others), (), generator=gen))]
            pool = [j for j in self.by_site[b] if j != i] or [i]
            j = pool[int(torch.randint(len(pool), (), generator=gen))]
            real = self.latents[j]
            if float(torch.rand((), generator=gen)) < self.cfg.prototype_condition_prob:
                p = self.prototypes[b]
                conds.append(p.latent[0])
                stats.append((p.channel_mean, p.channel_std))
            else:
                conds.append(real)
                m, s = channel_stats(real[None])
                stats.append((m.flatten(), s.flatten()))
            reals.append(real)
        mean = torch.stack([m for m, _ in stats]).to(self.device)
        std = torch.stack([s for _, s in stats]).to(self.device)
        return torch.stack(conds).to(self.device), (mean, std), torch.stack(reals).to(self.device)

    def _grad_loss(self, z0_hat: torch.Tensor, indices: list[int], gen: torch.Generator) -> torch.Tensor:
        box = random_crop_box(z0_hat.shape[2:], self.cfg.grad_crop, gen)
        f = self.ae.downsampling
        ibox = scale_box(box, f)
        dec = self.ae.decode(z0_hat[(slice(None), slice(None), *box)] / self.scale_factor)
        src = torch.stack([volume_tensor(self.volumes[i])[ibox] for i in indices])[:, None].to(self.device)
        if self.masks is not None:
            mask = torch.stack([volume_tensor(self.masks[i])[ibox] for i in indices])[:, None].to(self.device)
        else:
            mask = (src > 0).float()
        return losses.gradient_loss(src, dec, mask)

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        adversarial = cfg.adv_weight > 0 and self.epoch_of(step) >= cfg.adv_burn_in_epochs
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        raw_disc = unwrap(self.disc) if self.disc is not None else None
        sums: dict[str, float] = {}
        T = self.schedule.num_train_timesteps
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            gen = self.generator(step, micro, "pairs")
            idx = self.item_indices(step, micro)
            z_s = self.latents[idx].to(self.device)
            cond, style_stats, real = self._pairs(idx, gen)
            noise = torch.randn(z_s.shape, generator=gen).to(self.device)
            t = torch.randint(0, T, (len(idx),), generator=gen)
            if cfg.timestep_focus:
                low = torch.randint(0, int(cfg.timestep_focus), (len(idx),), generator=gen)
                t = torch.where(torch.rand(len(idx), generator=gen) < cfg.timestep_focus_prob, low, t)
            t = t.to(self.device)
            style = condition_style(cond) if unwrap(self.unet).style_embed is not None else None  # whole condition
            if cfg.latent_crop:
                box = (slice(None), slice(None), *random_crop_box(z_s.shape[2:], cfg.latent_crop, gen))
                z_s, cond, real, noise = z_s[box], cond[box].contiguous(), real[box], noise[box]
            with self._sync(self.unet, last), self.autocast():
                z_f = adain(z_s, style_stats)
                z_t = self.schedule.add_noise(z_f, noise, t)
                eps_hat = self.unet(z_t, t, cond, style).float()
                z0_hat = self.schedule.predict_z0(z_t, eps_hat, t, cfg.z0_clip)
                l_noise = losses.noise_loss(eps_hat, noise)
                l_content = losses.content_loss(z_s, z0_hat)
                l_style = (losses.gram_style_loss(z0_hat, real) if cfg.style_loss == "gram"
                           else losses.stat_style_loss(z0_hat, real))
                loss = cfg.noise_weight * l_noise + cfg.content_weight * l_content + cfg.style_weight * l_style
                g_adv = loss.new_zeros(())
                if adversarial:
                    raw_disc.requires_grad_(False)
                    g_adv = losses.bce_generator_loss(raw_disc(z0_hat))
                    raw_disc.requires_grad_(True)
                    loss = loss + cfg.adv_weight * g_adv
                l_grad = loss.new_zeros(())
                if cfg.grad_weight > 0:
                    l_grad = self._grad_loss(z0_hat, idx, gen)
                    loss = loss + cfg.grad_weight * l_grad
                self.scaler.scale(loss / cfg.grad_accum).backward()
            d_loss = torch.zeros(())
            if cfg.adv_weight > 0:
                with self._sync(self.disc, last), self.autocast():
                    real_logits, fake_logits = self.disc(torch.cat([real, z_s])).chunk(2)
                    d_loss = losses.bce_discriminator_loss(real_logits, fake_logits)
                    self.scaler.scale(d_loss / cfg.grad_accum).backward()
            for k, v in (("loss", loss), ("noise", l_noise), ("content", l_content), ("style", l_style),
                         ("g_adv", g_adv), ("grad", l_grad), ("d_loss", d_loss)):
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        self.optimizer_step("unet", self.unet)
        if cfg.adv_weight > 0:
            self.optimizer_step("discriminator", self.disc)
        self.scaler.update()
        return sums


def train_ldm(data, site_labels: Sequence[str], cfg: LDMTrainConfig, workdir, *, autoencoder=None,
              scale_factor: float | None = None, volumes: Sequence | None = None, masks: Sequence | None = None,
              prototypes: dict[str, SitePrototype] | None = None, device=None, stop_after_steps: int | None = None,
              time_limit_s: float | None = None) -> LDMResult:
    """Train (or resume training of) the conditional latent diffusion model in ``workdir``.

    Args:
        data: scaled latents ``(n, C, d, h, w)``, or a sequence of ``(D, H, W)`` volumes in [0, 1] that are
            encoded once with ``autoencoder`` and cached in ``workdir``.
        site_labels: site of each item.
        cfg: stage settings; ``cfg.unet`` holds the architecture.
        autoencoder / scale_factor: the frozen stage-1 model and its latent scale factor (needed to encode
            volumes and for the image-gradient loss).
        volumes / masks: images (and optional brain masks) of the items for the image-gradient loss when
            ``data`` holds latents; masks default to ``volume > 0``.
        prototypes: site -> prototype for prototype conditioning; default: the mean latent of each site.
        stop_after_steps / time_limit_s: end this call early (after a checkpoint); call again to continue.
    """
    ctx = setup(device)
    if isinstance(data, torch.Tensor):
        latents = data
    else:
        if autoencoder is None or scale_factor is None:
            raise ValueError("encoding volumes needs the autoencoder and the scale factor")
        volumes = data if volumes is None else volumes
        latents = cached_latents(autoencoder.to(ctx.device), data, scale_factor, workdir, ctx.device)
    run = _Stage2(latents, site_labels, cfg, workdir, ctx, autoencoder, scale_factor, volumes, masks, prototypes)
    complete = run.run(stop_after_steps, time_limit_s)
    unet = unwrap(run.unet)
    averaged = run.averaged_state()
    if averaged is not None:  # the moving average of the weights is the trained network
        unet = DiffusionUNet(**unet.config).to(ctx.device)
        unet.load_state_dict(averaged)
    disc = unwrap(run.disc).eval() if run.disc is not None else None
    return LDMResult(unet.eval(), disc, run.prototypes, run.schedule,
                     Path(workdir) / HISTORY, complete)
