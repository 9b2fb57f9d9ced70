"""Latent map fusion: instance normalisation (IN) and adaptive instance normalisation (AdaIN).

Statistics are per sample and channel over the spatial axes of ``(N, C, d, h, w)`` latents; the standard
deviation is ``sqrt(var + eps)`` with the population variance.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def channel_stats(z: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation, each ``(N, C, 1, 1, 1)``."""
    var, mean = torch.var_mean(z.float(), dim=tuple(range(2, z.ndim)), correction=0, keepdim=True)
    return mean, (var + eps).sqrt()


def instance_norm(z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``(z - mean(z)) / std(z)`` per sample and channel."""
    mean, std = channel_stats(z, eps)
    return ((z.float() - mean) / std).to(z.dtype)


def adain(content: torch.Tensor, style, eps: float = EPS) -> torch.Tensor:
    """``std(style) * IN(content) + mean(style)``.

    Args:
        content: ``(N, C, d, h, w)`` latent whose layout is kept.
        style: a latent ``(N or 1, C, ...)`` whose channel statistics are imposed, or a ``(mean, std)`` pair of
            tensors broadcastable to ``(N, C, 1, 1, 1)`` (e.g. the stored statistics of a site prototype).
    """
    if isinstance(style, torch.Tensor):
        s_mean, s_std = channel_stats(style, eps)
    else:
        s_mean, s_std = (torch.as_tensor(v, dtype=torch.float32, device=content.device) for v in style)
        s_mean = s_mean.reshape(-1, content.shape[1], *([1] * (content.ndim - 2)))
        s_std = s_std.reshape(-1, content.shape[1], *([1] * (content.ndim - 2)))
    c_mean, c_std = channel_stats(content, eps)
    return ((content.float() - c_mean) * (s_std / c_std) + s_mean).to(content.dtype)
