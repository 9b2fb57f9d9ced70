"""Conditional diffusion UNet: predicts the noise of a latent given the noisy latent and a condition latent.

Input ``concat(z_t, c)`` with shape ``(N, 2 * latent_channels, d, h, w)``; output ``(N, latent_channels, d,
h, w)``. ``len(channels) - 1`` downsamplings, so every latent axis must be divisible by
``2 ** (len(channels) - 1)`` (4 by default; 16 in image space with the x4 autoencoder).

Levels: ``num_res_blocks`` residual blocks on the way down (each followed by self-attention at the levels
flagged in ``attention_levels``), a middle block (residual, attention, residual), ``num_res_blocks + 1``
residual blocks on the way up that take the skip connections, and GroupNorm, SiLU and a zero-initialised
3x3 conv out. Every residual block receives an MLP of a sinusoidal embedding of the timestep.

With ``patch_size`` p > 1 the input is folded space-to-depth (p x p x p latent voxels into channels) before
the first convolution and the output unfolded after the last, as vision transformers "patchify": the UNet
then runs at 1/p of the latent resolution, p^3 times fewer positions, and a latent axis must be divisible by
``p * 2 ** (len(channels) - 1)``.

With ``style_embedding`` the condition also enters globally: its per-channel mean and log standard deviation
over the grid (the statistics AdaIN transfers; :func:`condition_style`) pass through an MLP whose output is
added to the timestep embedding, so every residual block is told the target's style. The MLP's last layer
starts at zero. Training passes the statistics of the whole condition when it works on crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .fusion import channel_stats
from .layers import (Conv3d, DepthToSpace, Downsample, ResBlock, SelfAttention, SpaceToDepth, Upsample,
                     level_settings, norm_silu, timestep_embedding)


class DiffusionUNet(nn.Module):
    """Epsilon-predicting 3D UNet.

    Args:
        in_channels: channels of ``concat(noisy latent, condition)``.
        out_channels: latent channels (predicted noise).
        channels: feature channels per level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: per level, whether residual blocks are followed by self-attention.
        head_channels: channels per attention head.
        norm_groups / norm_eps: GroupNorm settings.
    """

    def __init__(
        self,
        in_channels: int = 12,
        out_channels: int = 6,
        channels: Sequence[int] = (32, 64, 64),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] = (False, True, True),
        head_channels: int = 64,
        norm_groups: int = 32,
        norm_eps: float = 1e-6,
        patch_size: int = 1,
        style_embedding: bool = False,
    ) -> None:
        super().__init__()
        channels, attention_levels = level_settings(channels, attention_levels, norm_groups)
        self._config = dict(
            in_channels=in_channels, out_channels=out_channels, channels=channels, num_res_blocks=num_res_blocks,
            attention_levels=attention_levels, head_channels=head_channels, norm_groups=norm_groups,
            norm_eps=norm_eps,
        )
        patch_size = int(patch_size)
        if patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {patch_size}")
        if patch_size != 1:  # older manifests lack the key; keep their config unchanged
            self._config["patch_size"] = patch_size
        if style_embedding:  # likewise
            self._config["style_embedding"] = True
        self.patch_size = patch_size
        self.fold = SpaceToDepth(patch_size) if patch_size > 1 else None
        self.unfold = DepthToSpace(patch_size) if patch_size > 1 else None
        self.downsampling = patch_size * 2 ** (len(channels) - 1)
        self.out_channels = out_channels
        temb = 4 * channels[0]
        self.time_embed = nn.Sequential(nn.Linear(channels[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.style_embed = None
        if style_embedding:
            self.style_embed = nn.Sequential(nn.Linear(2 * (in_channels - out_channels), temb), nn.SiLU(),
                                             nn.Linear(temb, temb))
            nn.init.zeros_(self.style_embed[2].weight)
            nn.init.zeros_(self.style_embed[2].bias)

        def res(cin, cout):
            return ResBlock(cin, cout, norm_groups, norm_eps, temb_channels=temb)

        def attn(c):
            return SelfAttention(c, min(head_channels, c), norm_groups, norm_eps)

        self.conv_in = Conv3d(in_channels * patch_size ** 3, channels[0], 3, padding=1)
        skip_channels = [channels[0]]
        self.down = nn.ModuleList()
        cin = channels[0]
        for level, cout in enumerate(channels):
            stage = nn.Module()
            stage.res = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.res.append(res(cin, cout))
                stage.attn.append(attn(cout) if attention_levels[level] else nn.Identity())
                cin = cout
                skip_channels.append(cout)
            stage.downsample = Downsample(cout) if level < len(channels) - 1 else nn.Identity()
            if level < len(channels) - 1:
                skip_channels.append(cout)
            self.down.append(stage)

        self.mid_res1, self.mid_attn, self.mid_res2 = res(cin, cin), attn(cin), res(cin, cin)

        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            cout = channels[level]
            stage = nn.Module()
            stage.res = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.res.append(res(cin + skip_channels.pop(), cout))
                stage.attn.append(attn(cout) if attention_levels[level] else nn.Identity())
                cin = cout
            stage.upsample = Upsample(cout) if level > 0 else nn.Identity()
            self.up.append(stage)

        self.out_norm = nn.GroupNorm(norm_groups, cin, eps=norm_eps)
        self.out_conv = Conv3d(cin, out_channels * patch_size ** 3, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @property
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> "DiffusionUNet":
        return cls(**config)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor | float | int,
                condition: torch.Tensor | None = None, style: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise ``(N, out_channels, d, h, w)``.

        Args:
            sample: ``(N, C, d, h, w)``; the full network input, or the noisy latent when ``condition`` is given.
            timesteps: ``(N,)`` or a scalar, integer or fractional training timesteps.
            condition: optional ``(N, C', d, h, w)`` latent concatenated to ``sample`` along channels.
            style: with ``style_embedding``, ``(N, 2 C')`` statistics of the condition (:func:`condition_style`);
                default: those of the condition given.
        """
        if self.style_embed is not None and style is None:
            style = condition_style(condition if condition is not None else sample[:, self.out_channels:])
        if condition is not None:
            sample = torch.cat([sample, condition.to(sample.dtype)], dim=1)
        for s in sample.shape[2:]:
            if s % self.downsampling:
                raise ValueError(f"latent grid {tuple(sample.shape[2:])} is not divisible by {self.downsampling}")
        t = torch.as_tensor(timesteps, device=sample.device)
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        temb = self.time_embed(timestep_embedding(t, self.conv_in.out_channels).to(self.time_embed[0].weight.dtype))
        if self.style_embed is not None:
            temb = temb + self.style_embed(style.to(temb.dtype).expand(sample.shape[0], -1))

        h = self.conv_in(sample if self.fold is None else self.fold(sample))
        skips = [h]
        for stage in self.down:
            for res, attn in zip(stage.res, stage.attn):
                h = attn(res(h, temb))
                skips.append(h)
            if not isinstance(stage.downsample, nn.Identity):
                h = stage.downsample(h)
                skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, temb)), temb)
        for stage in self.up:
            for res, attn in zip(stage.res, stage.attn):
                h = attn(res(torch.cat([h, skips.pop()], dim=1), temb))
            h = stage.upsample(h)
        out = self.out_conv(norm_silu(h, self.out_norm))
        return out if self.unfold is None else self.unfold(out)


def condition_style(condition: torch.Tensor) -> torch.Tensor:
    """``(N, 2 C)``: per-channel mean and log standard deviation (:func:`~.fusion.channel_stats`) of a condition
    latent over its grid."""
    mean, std = channel_stats(condition)
    return torch.cat([mean.flatten(1), std.log().flatten(1)], dim=1)
