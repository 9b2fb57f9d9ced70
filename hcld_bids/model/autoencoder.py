"""3D KL-regularised autoencoder: a T1w volume ``(N, 1, D, H, W)`` <-> a latent map ``(N, 6, D/4, H/4, W/4)``.

Encoder: optionally a space-to-depth fold of ``patch_size``-voxel blocks into channels (``patch_size`` 2: the
network runs at half resolution from its first convolution and the latent is 2x smaller per axis more), conv
in, then per level ``num_res_blocks`` residual blocks (self-attention after each block at the levels flagged
in ``attention_levels``) and a stride-2 downsampling between levels; a middle block (residual, attention
unless ``mid_attention`` is off, residual); GroupNorm, SiLU and a 3x3 conv to ``2 * latent_channels``
(posterior mean and log-variance). The decoder mirrors it and ends with the depth-to-space unfold.

With ``linear_skip`` a linear path runs beside both networks: a 1x1x1 convolution from the space-to-depth
fold of the input (the whole downsampling factor) to the latent mean, and one from the latent back to the
folded output. :meth:`AutoencoderKL.init_linear_skip` sets it to the principal components of the training
images' voxel blocks and zeroes the last convolution of each network, so training starts from the best linear
code of that size and the networks learn only what it misses (a 2 mm T1w keeps 0.97 SSIM in 4 of 8
components per 2x2x2 block before any training; benchmarks/RESULTS.md).

Every constructor argument is JSON-serialisable and :attr:`AutoencoderKL.config` returns them, so a bundle can
rebuild the network from its manifest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers import (Conv3d, DepthToSpace, Downsample, ResBlock, SelfAttention, SpaceToDepth, Upsample,
                     level_settings, norm_silu, run_blocks)


class _Head(nn.Module):
    """GroupNorm, SiLU, 3x3 conv: the last step of the encoder and of the decoder."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int, norm_eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, in_channels, eps=norm_eps)
        self.conv = Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(norm_silu(x, self.norm))

    def forward_owned(self, box: list) -> torch.Tensor:
        return self.conv(norm_silu(box.pop(), self.norm, owned=True))


class AutoencoderKL(nn.Module):
    """KL autoencoder for single-channel 3D volumes.

    Args:
        in_channels / out_channels: image channels (1 for T1w).
        channels: feature channels per level; ``len(channels) - 1`` downsamplings (x4 for three levels).
        latent_channels: channels of the latent map.
        num_res_blocks: residual blocks per level (encoder and decoder).
        attention_levels: per level, whether residual blocks are followed by self-attention.
        norm_groups / norm_eps: GroupNorm settings.
        attention_head_channels: channels per attention head (``None``: one head).
        patch_size: space-to-depth factor at the input (and depth-to-space at the output); 1 = none.
        mid_attention: self-attention in the middle blocks of encoder and decoder.
        linear_skip: a linear (1x1x1) path from the folded input to the latent mean and from the latent to the
            folded output, beside the networks (see :meth:`init_linear_skip`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 64),
        latent_channels: int = 6,
        num_res_blocks: int = 2,
        attention_levels: Sequence[bool] = (False, False, True),
        norm_groups: int = 8,
        norm_eps: float = 1e-6,
        attention_head_channels: int | None = None,
        patch_size: int = 1,
        mid_attention: bool = True,
        linear_skip: bool = False,
    ) -> None:
        super().__init__()
        channels, attention_levels = level_settings(channels, attention_levels, norm_groups)
        self._config = dict(
            in_channels=in_channels, out_channels=out_channels, channels=channels, latent_channels=latent_channels,
            num_res_blocks=num_res_blocks, attention_levels=attention_levels, norm_groups=norm_groups,
            norm_eps=norm_eps, attention_head_channels=attention_head_channels,
        )
        patch_size = int(patch_size)
        if patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {patch_size}")
        if patch_size != 1 or not mid_attention:  # older manifests lack these keys; keep their config unchanged
            self._config.update(patch_size=patch_size, mid_attention=bool(mid_attention))
        if linear_skip:
            self._config.update(linear_skip=True)
        self.latent_channels = latent_channels
        self.patch_size = patch_size
        self.downsampling = patch_size * 2 ** (len(channels) - 1)

        def res(cin, cout):
            return ResBlock(cin, cout, norm_groups, norm_eps)

        def attn(c):
            return SelfAttention(c, attention_head_channels, norm_groups, norm_eps)

        def mid(c):
            return [res(c, c), attn(c), res(c, c)] if mid_attention else [res(c, c), res(c, c)]

        fold = [SpaceToDepth(patch_size)] if patch_size > 1 else []
        enc: list[nn.Module] = fold + [Conv3d(in_channels * patch_size ** 3, channels[0], 3, padding=1)]
        cin = channels[0]
        for level, cout in enumerate(channels):
            for _ in range(num_res_blocks):
                enc.append(res(cin, cout))
                cin = cout
                if attention_levels[level]:
                    enc.append(attn(cout))
            if level < len(channels) - 1:
                enc.append(Downsample(cout))
        enc += mid(cin) + [_Head(cin, 2 * latent_channels, norm_groups, norm_eps)]
        self.encoder = nn.ModuleList(enc)

        top = channels[-1]
        dec: list[nn.Module] = [Conv3d(latent_channels, top, 3, padding=1)] + mid(top)
        cin = top
        for level in reversed(range(len(channels))):
            cout = channels[level]
            for _ in range(num_res_blocks):
                dec.append(res(cin, cout))
                cin = cout
                if attention_levels[level]:
                    dec.append(attn(cout))
            if level > 0:
                dec.append(Upsample(cout))
        dec.append(_Head(cin, out_channels * patch_size ** 3, norm_groups, norm_eps))
        if patch_size > 1:
            dec.append(DepthToSpace(patch_size))
        self.decoder = nn.ModuleList(dec)

        self.linear_skip = bool(linear_skip)
        if self.linear_skip:
            f = self.downsampling
            self.skip_fold = SpaceToDepth(f) if f > 1 else nn.Identity()
            self.skip_in = Conv3d(in_channels * f ** 3, latent_channels, 1)
            self.skip_out = Conv3d(latent_channels, out_channels * f ** 3, 1)
            self.skip_unfold = DepthToSpace(f) if f > 1 else nn.Identity()
            for conv in (self.skip_in, self.skip_out):
                conv.keep_float32 = True  # harmonize.cast_for_autocast leaves these weights alone

    @property
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> "AutoencoderKL":
        return cls(**config)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """``(C, d, h, w)`` of the latent of a ``(D, H, W)`` image."""
        for s in image_shape:
            if s % self.downsampling:
                raise ValueError(f"image grid {tuple(image_shape)} is not divisible by {self.downsampling}")
        return (self.latent_channels, *(s // self.downsampling for s in image_shape))

    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each ``(N, latent_channels, D/f, H/f, W/f)``."""
        skip = self._linear(self.skip_in, self.skip_fold(x)) if self.linear_skip else None
        moments = run_blocks(self.encoder, x)
        mean, logvar = moments.chunk(2, dim=1)
        if skip is not None:
            mean = mean + skip
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean ``(N, latent_channels, D/f, H/f, W/f)`` (the latent that diffusion works on)."""
        mean, _ = self.encode_posterior(x)
        return mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, latent_channels, d, h, w) -> (N, out_channels, d*f, h*f, w*f)``."""
        if not self.linear_skip:
            return run_blocks(self.decoder, z)
        skip = self.skip_unfold(self._linear(self.skip_out, z))
        return run_blocks(self.decoder, z) + skip

    @staticmethod
    def _linear(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The linear path in float32 even under autocast: it carries the whole intensity of the image, which
        bfloat16 (8 bits of mantissa) would round to about 0.4 %."""
        with torch.autocast(x.device.type, enabled=False):
            return F.conv3d(x.float(), conv.weight.float(), None if conv.bias is None else conv.bias.float())

    @torch.no_grad()
    def init_linear_skip(self, volumes: Sequence, max_blocks: int = 200_000, logvar: float = -8.0,
                         seed: int = 0) -> dict:
        """Start the network at the best linear autoencoder of the training images.

        The ``f x f x f`` voxel blocks of ``volumes`` (arrays ``(D, H, W)``; blocks that are all background are
        left out) give a principal-component basis; the linear path encodes a block as its first
        ``latent_channels`` whitened components and decodes them back, which alone reconstructs what those
        components hold. The last convolutions of both nonlinear branches are zeroed, so training starts from
        that linear solution and learns only what it misses; the posterior log-variance starts at ``logvar``.
        Returns the explained-variance fraction of the kept components.
        """
        if not self.linear_skip:
            raise ValueError("init_linear_skip needs an autoencoder built with linear_skip=True")
        f = self.downsampling
        gen = np.random.default_rng(seed)
        per_volume = max(1, max_blocks // max(1, len(volumes)))
        rows = []
        for vol in volumes:
            x = torch.as_tensor(np.asarray(vol, dtype=np.float32))[None, None]
            blocks = self.skip_fold(x).reshape(x.shape[1] * f ** 3, -1).T.contiguous() if f > 1 \
                else x.reshape(1, -1).T
            blocks = blocks[blocks.abs().amax(dim=1) > 0]
            if len(blocks) > per_volume:
                blocks = blocks[torch.as_tensor(np.sort(gen.choice(len(blocks), per_volume, replace=False)))]
            rows.append(blocks)
        data = torch.cat(rows).double()
        k = self.latent_channels
        if data.shape[1] < k:
            raise ValueError(f"latent_channels={k} exceeds the {data.shape[1]} values of a block")
        mu = data.mean(dim=0)
        eigval, eigvec = torch.linalg.eigh(torch.cov((data - mu).T))
        order = torch.argsort(eigval, descending=True)[:k]
        lam = eigval[order].clamp_min(1e-12)
        basis = eigvec[:, order]  # (values per block, k)
        w_in = (basis / lam.sqrt()).T  # whitened components
        w_out = basis * lam.sqrt()
        self.skip_in.weight.copy_(w_in.reshape(self.skip_in.weight.shape).float())
        self.skip_in.bias.copy_((-(w_in @ mu)).float())
        self.skip_out.weight.copy_(w_out.reshape(self.skip_out.weight.shape).float())
        self.skip_out.bias.copy_(mu.float())
        head_in, head_out = self.encoder[-1].conv, self.decoder[-2 if self.patch_size > 1 else -1].conv
        head_in.weight.zero_()
        head_in.bias.zero_()
        head_in.bias[k:] = logvar
        head_out.weight.zero_()
        head_out.bias.zero_()
        return {"explained_variance": float(eigval[order].sum() / eigval.clamp_min(0).sum())}

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruction, posterior mean and log-variance.

        In training mode the decoder sees a sample ``mean + exp(logvar / 2) * noise`` of the posterior (noise
        from the CPU ``generator`` when given); in evaluation mode it sees the mean.
        """
        mean, logvar = self.encode_posterior(x)
        if self.training:
            # drawn on the CPU generator (if given) so that a seeded draw is the same on every device
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        else:
            z = mean
        return self.decode(z), mean, logvar

