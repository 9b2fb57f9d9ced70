"""Stage 1: train the KL autoencoder with L1, KL, SSIM (perceptual stand-in) and a 3D PatchGAN.

Per optimizer step and process: ``grad_accum`` micro-batches of ``batch_size`` random patches (or whole
volumes). The adversarial terms (generator and discriminator) start after ``adv_warmup_epochs``. With
``augment_prob`` > 0 each item is, with that probability, re-rendered by the ``augment`` callable (a random
simulated acquisition: contrast, blur, noise) before the patch is cut, so that styles the training sites do
not show still reconstruct. With ``ema_decay`` the returned autoencoder holds the moving average of the
weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import losses
from ..autoencoder import AutoencoderKL
from ..prototypes import compute_scale_factor
from .checkpoint import checkpoint_path
from .config import AutoencoderTrainConfig
from .data import image_batch
from .distributed import DistContext, setup, unwrap
from .loop import HISTORY, TrainingRun


@dataclass
class AutoencoderResult:
    autoencoder: AutoencoderKL
    scale_factor: float
    history: Path
    complete: bool


class _Stage1(TrainingRun):
    stage = "autoencoder"

    def __init__(self, volumes: Sequence, cfg: AutoencoderTrainConfig, workdir, ctx: DistContext,
                 augment: Callable | None = None) -> None:
        super().__init__(cfg, workdir, ctx, len(volumes))
        if cfg.augment_prob > 0 and augment is None:
            raise ValueError("augment_prob > 0 needs an augment callable")
        self.volumes = volumes
        self.augment = augment
        torch.manual_seed(cfg.seed)
        ae = AutoencoderKL(**cfg.autoencoder)
        if ae.linear_skip and not checkpoint_path(self.workdir).is_file():
            # a fresh run starts from the best linear autoencoder of the training images (a resume loads its own)
            ae.init_linear_skip(volumes, seed=cfg.seed)
        ae = ae.to(self.device)
        if self.device.type == "cpu":  # oneDNN runs 3D convolutions faster in channels_last_3d
            ae = ae.to(memory_format=torch.channels_last_3d)
        self.ae = ctx.wrap(ae)
        self.models = {"autoencoder": self.ae}
        self.ema_model = "autoencoder"
        self.optimizers = {"autoencoder": torch.optim.Adam(self.ae.parameters(), lr=cfg.lr)}
        self.disc = None
        if cfg.adv_weight > 0:  # without the adversarial term there is no discriminator to train or to keep
            disc = losses.PatchDiscriminator3D(1, cfg.disc_channels, cfg.disc_layers).to(self.device)
            if self.device.type == "cpu":
                disc = disc.to(memory_format=torch.channels_last_3d)
            self.disc = ctx.wrap(disc)
            self.models["discriminator"] = self.disc
            self.optimizers["discriminator"] = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr)
        self.schedulers = {k: self.lr_schedule(o) for k, o in self.optimizers.items()}

    def _sync(self, model, last: bool):
        return contextlib.nullcontext() if last or not self.ctx.enabled else model.no_sync()

    def _items(self, step: int, micro: int) -> list:
        """The volumes of one micro-batch, each re-rendered by ``augment`` with probability ``augment_prob``."""
        items = []
        gen = self.generator(step, micro, "augment")
        for i in self.item_indices(step, micro):
            vol = self.volumes[i]
            draw = float(torch.rand((), generator=gen))
            seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
            if self.cfg.augment_prob > 0 and draw < self.cfg.augment_prob:
                vol = self.augment(np.asarray(vol, dtype=np.float32), np.random.default_rng(seed))
            items.append(vol)
        return items

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        adversarial = cfg.adv_weight > 0 and self.epoch_of(step) >= cfg.adv_warmup_epochs
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        raw_disc = unwrap(self.disc) if self.disc is not None else None
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            gen = self.generator(step, micro, "data")
            x = image_batch(self._items(step, micro), None, cfg.patch_size, gen).to(self.device)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with self._sync(self.ae, last), self.autocast():
                recon, mean, logvar = self.ae(x, generator=self.generator(step, micro, "posterior"))
                l1 = losses.reconstruction_l1(recon, x)
                kl = losses.kl_loss(mean, logvar)
                ssim = losses.ssim_loss(recon, x) if cfg.ssim_weight > 0 else recon.new_zeros(())
                loss = l1 + cfg.kl_weight * kl + cfg.ssim_weight * ssim
                g_adv = recon.new_zeros(())
                if adversarial:
                    raw_disc.requires_grad_(False)
                    g_adv = losses.lsgan_generator_loss(raw_disc(recon.float()))
                    raw_disc.requires_grad_(True)
                    loss = loss + cfg.adv_weight * g_adv
                self.scaler.scale(loss / cfg.grad_accum).backward()
            d_loss = torch.zeros(())
            if adversarial:
                with self._sync(self.disc, last), self.autocast():
                    logits = self.disc(torch.cat([x, recon.detach().float()]).contiguous(
                        memory_format=torch.channels_last_3d if self.device.type == "cpu" else torch.contiguous_format))
                    real, fake = logits.chunk(2)
                    d_loss = losses.lsgan_discriminator_loss(real, fake)
                    self.scaler.scale(cfg.adv_weight * d_loss / cfg.grad_accum).backward()
            for k, v in (("loss", loss), ("l1", l1), ("kl", kl), ("ssim", ssim), ("g_adv", g_adv), ("d_loss", d_loss)):
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        self.optimizer_step("autoencoder", self.ae)
        if adversarial:
            self.optimizer_step("discriminator", self.disc)
        self.scaler.update()
        return sums


def train_autoencoder(volumes: Sequence, cfg: AutoencoderTrainConfig, workdir, *, device=None,
                      stop_after_steps: int | None = None, time_limit_s: float | None = None,
                      augment: Callable | None = None) -> AutoencoderResult:
    """Train (or resume training of) the autoencoder in ``workdir``.

    Args:
        volumes: sequence of ``(D, H, W)`` float32 arrays in [0, 1] (template space, skull-stripped).
        cfg: stage settings; ``cfg.autoencoder`` holds the architecture.
        workdir: holds ``checkpoint.safetensors`` (resumed from when present) and ``history.csv``.
        device: default CUDA when available; under torchrun each process takes its LOCAL_RANK GPU.
        stop_after_steps / time_limit_s: end this call early (after a checkpoint); call again to continue.
        augment: ``augment(volume, numpy_generator) -> volume`` for ``cfg.augment_prob`` (e.g.
            :func:`hcld_bids.simulate.restyle_model_volume` with a random site).

    Returns the (unwrapped, eval-mode) autoencoder, the latent scale factor ``1 / std`` of the latents of
    the first ``cfg.scale_factor_images`` volumes, the CSV path and whether all steps are done.
    """
    ctx = setup(device)
    run = _Stage1(volumes, cfg, workdir, ctx, augment)
    complete = run.run(stop_after_steps, time_limit_s)
    ae = unwrap(run.ae)
    averaged = run.averaged_state()
    if averaged is not None:
        ae = AutoencoderKL(**cfg.autoencoder).to(ctx.device)
        ae.load_state_dict(averaged)
    ae = ae.eval()
    n = min(len(volumes), cfg.scale_factor_images)
    scale = compute_scale_factor(ae, [volumes[i] for i in range(n)], ctx.device)
    return AutoencoderResult(ae, scale, Path(workdir) / HISTORY, complete)
