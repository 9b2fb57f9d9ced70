"""Site style prototypes: the voxel-wise mean of the scaled latents of one site's template-space images.

All images are registered to one template and cropped to one grid, so their latents are spatially aligned
and can be averaged. A prototype keeps, besides the mean latent, the average per-image channel statistics:
averaging latents smooths them, so the mean latent's own channel standard deviation is smaller than that
of any real image of the site; fusion (AdaIN) uses the per-image statistics instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .fusion import channel_stats


@dataclass
class SitePrototype:
    """Style of one site.

    Attributes:
        latent: ``(1, C, d, h, w)`` float32, mean of the scaled latents (the UNet condition).
        channel_mean: ``(C,)`` mean over images of the per-image channel means.
        channel_std: ``(C,)`` mean over images of the per-image channel standard deviations.
        count: number of images averaged.
    """

    latent: torch.Tensor
    channel_mean: torch.Tensor
    channel_std: torch.Tensor
    count: int


def as_volume_tensor(volume, device="cpu") -> torch.Tensor:
    """A ``(D, H, W)`` array or tensor as a float32 ``(1, 1, D, H, W)`` tensor on ``device``."""
    t = torch.as_tensor(np.asarray(volume, dtype=np.float32)) if not isinstance(volume, torch.Tensor) else volume
    if t.ndim != 3:
        raise ValueError(f"expected a 3D volume (D, H, W), got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)[None, None]


@torch.inference_mode()
def encode_scaled(autoencoder, volume, scale_factor: float, device="cpu") -> torch.Tensor:
    """``scale_factor * E(volume)`` as a float32 ``(1, C, d, h, w)`` tensor on ``device``."""
    x = as_volume_tensor(volume, device)
    if torch.device(device).type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return (autoencoder.encode(x).float() * float(scale_factor)).contiguous()


def compute_site_prototype(autoencoder, volumes: Iterable, scale_factor: float, device="cpu") -> SitePrototype:
    """Average the scaled latents of ``volumes`` (each ``(D, H, W)`` in [0, 1] on the model grid)."""
    total = None
    mean_sum = std_sum = None
    count = 0
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        for volume in volumes:
            z = encode_scaled(autoencoder, volume, scale_factor, device).double()
            if total is not None and z.shape != total.shape:
                raise ValueError(f"all volumes of a site must share one grid; got latents {tuple(z.shape)} "
                                 f"and {tuple(total.shape)}")
            m, s = channel_stats(z)
            total = z if total is None else total + z
            mean_sum = m.flatten() if mean_sum is None else mean_sum + m.flatten()
            std_sum = s.flatten() if std_sum is None else std_sum + s.flatten()
            count += 1
    finally:
        autoencoder.train(was_training)
    if count == 0:
        raise ValueError("a site prototype needs at least one volume")
    return SitePrototype(latent=(total / count).float().cpu(), channel_mean=(mean_sum / count).float().cpu(),
                         channel_std=(std_sum / count).float().cpu(), count=count)


def compute_scale_factor(autoencoder, volumes: Iterable, device="cpu") -> float:
    """``1 / std`` of the unscaled latents (posterior means) of ``volumes``, pooled."""
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        latents = [encode_scaled(autoencoder, v, 1.0, device).double().flatten() for v in volumes]
    finally:
        autoencoder.train(was_training)
    if not latents:
        raise ValueError("the scale factor needs at least one volume")
    return float(1.0 / torch.cat(latents).std())


def prototype_from_latents(latents: torch.Tensor) -> SitePrototype:
    """Prototype of already encoded, scaled latents ``(n, C, d, h, w)`` of one site."""
    z = latents.double()
    m, s = channel_stats(z)
    return SitePrototype(latent=z.mean(0, keepdim=True).float().cpu(), channel_mean=m.mean(0).flatten().float().cpu(),
                         channel_std=s.mean(0).flatten().float().cpu(), count=int(z.shape[0]))
