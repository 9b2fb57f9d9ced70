"""Configuration of the two training stages (plain dataclasses, JSON round-trip, no globals)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class LoopConfig:
    """Settings shared by both stages.

    ``epochs`` count passes over the training items; one optimizer step consumes
    ``batch_size * grad_accum`` items per process. ``steps`` (optimizer steps) overrides ``epochs``.
    """

    epochs: int = 30
    steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int = 0
    lr_min_ratio: float = 1.0  # 1.0: constant learning rate after warm-up; < 1: cosine decay to lr * ratio
    seed: int = 0
    amp: bool = True  # CUDA only; ignored on CPU
    amp_dtype: str = "bfloat16"  # or "float16" (then a GradScaler is used)
    checkpoint_every: int = 100
    progress: bool = True
    grad_clip: float | None = 1.0
    # Exponential moving average of the trained network's weights (decay per optimizer step); the EMA copy
    # is what a finished stage returns and what a bundle stores. None: no EMA.
    ema_decay: float | None = None
    # Store the optimizers' moment estimates in bfloat16 (a third less checkpoint; resuming is then close to,
    # not bit-identical with, an uninterrupted run). For training states kept in a repository.
    compact_checkpoint: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        kw = dict(d)
        for f in dataclasses.fields(cls):
            if f.name in kw and isinstance(kw[f.name], list) and "tuple" in str(f.type):
                kw[f.name] = tuple(kw[f.name])
        return cls(**kw)


@dataclass
class AutoencoderTrainConfig(LoopConfig):
    """Stage 1: autoencoder with a 3D PatchGAN (method.md, "Stage 1")."""

    autoencoder: dict = field(default_factory=dict)  # AutoencoderKL arguments; {} = defaults
    disc_channels: int = 32
    disc_layers: int = 3
    batch_size: int = 2
    disc_lr: float = 5e-4
    kl_weight: float = 1e-6
    adv_weight: float = 0.01
    ssim_weight: float = 0.1  # stands in for the 0.1 perceptual loss (needs no pretrained download)
    adv_warmup_epochs: float = 5.0  # generator/discriminator adversarial terms start after this many epochs
    patch_size: tuple[int, int, int] | None = None  # random 3D patches; None = whole volumes
    # Probability that a training item is re-rendered with a random simulated site effect (contrast curve,
    # blur, noise; the ``augment`` callable given to train_autoencoder) so that unseen styles reconstruct.
    augment_prob: float = 0.0
    scale_factor_images: int = 8  # training images whose latents set scale_factor = 1 / std


@dataclass
class LDMTrainConfig(LoopConfig):
    """Stage 2: conditional latent diffusion with the HCLD losses (method.md, "Stage 2")."""

    unet: dict = field(default_factory=dict)  # DiffusionUNet arguments; {} = defaults
    noise_schedule: dict = field(default_factory=dict)  # NoiseSchedule arguments; {} = defaults
    epochs: int = 80
    grad_accum: int = 4
    disc_lr: float = 1e-5
    disc_betas: tuple[float, float] = (0.5, 0.999)
    disc_channels: tuple[int, ...] = (64, 128, 256)
    noise_weight: float = 1.0
    content_weight: float = 10.0
    style_weight: float = 10.0
    style_loss: str = "gram"  # or "stats"
    adv_weight: float = 1.0
    adv_burn_in_epochs: float = 5.0
    grad_weight: float = 1e4
    grad_crop: int | None = 8  # latent voxels per axis of the decoded crop for the gradient loss; None = whole
    # Clamp the clean-latent estimate to [-z0_clip, z0_clip] before the content/style/adversarial/gradient
    # losses. The reference implementation's scheduler clamps to [-1, 1] by default; on unit-variance latents
    # that clips a third of the values, and in our runs it made the noise loss diverge, so it is off.
    z0_clip: float | None = None
    prototype_condition_prob: float = 0.0  # probability of conditioning on the target site's prototype
    same_site_prob: float = 0.0  # probability of drawing the condition from the source's own site
    target_site: str | None = None  # condition always on this site (the paper's one-target training); None: any
    # Train on random cubes of this many latent voxels per axis (the same cube of source, condition and noise)
    # instead of whole latents: cheaper steps for a convolutional UNet. None: whole latents.
    latent_crop: int | None = None
    # With this probability a timestep is drawn from [0, timestep_focus) instead of [0, T): more training
    # where light-noise inference regimes (SDEdit at low strength) query the network. None: uniform.
    timestep_focus: int | None = None
    timestep_focus_prob: float = 0.0
