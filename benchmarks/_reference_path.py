"""A straightforward implementation of the harmonization path, as the research code runs it, for comparison.

It evaluates the very same networks (same parameters) with plain operators: default memory layout,
``F.conv3d`` (PyTorch's own backend choice), nearest-neighbour upsampling followed by a full-resolution
convolution, attention that materialises the ``L x L`` score matrix, float32 under ``torch.no_grad``,
every intermediate tensor kept until its block returns. Per subject it encodes the target and the source
image, runs the inversion and sampling UNet calls and decodes three times (the noisy latent, the result,
and the result again for the second output variant), as in the cost table of docs/method.md.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from hcld_bids.model.autoencoder import _Head
from hcld_bids.model.fusion import adain
from hcld_bids.model.layers import Downsample, ResBlock, SelfAttention, Upsample, timestep_embedding


def _conv(conv, x):
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding)


def _res(block: ResBlock, x, temb=None):
    h = _conv(block.conv1, F.silu(F.group_norm(x, block.norm1.num_groups, block.norm1.weight, block.norm1.bias,
                                               block.norm1.eps)))
    if block.temb_proj is not None:
        h = h + block.temb_proj(F.silu(temb))[:, :, None, None, None]
    h = _conv(block.conv2, F.silu(F.group_norm(h, block.norm2.num_groups, block.norm2.weight, block.norm2.bias,
                                               block.norm2.eps)))
    return (x if block.skip is None else _conv(block.skip, x)) + h


def _attn(block: SelfAttention, x):
    n, c, d, h, w = x.shape
    length, heads = d * h * w, block.heads
    t = F.group_norm(x, block.norm.num_groups, block.norm.weight, block.norm.bias, block.norm.eps)
    t = t.reshape(n, c, length).transpose(1, 2)
    q, k, v = block.qkv(t).reshape(n, length, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = (a.reshape(n * heads, length, c // heads) for a in (q, k, v))
    scores = torch.baddbmm(torch.empty(n * heads, length, length, dtype=q.dtype, device=q.device), q, k.transpose(1, 2), beta=0,
                           alpha=(c // heads) ** -0.5)
    out = torch.bmm(scores.softmax(dim=-1), v).reshape(n, heads, length, c // heads).transpose(1, 2)
    out = block.proj(out.reshape(n, length, c))
    return x + out.transpose(1, 2).reshape(n, c, d, h, w)


def _block(b, x, temb=None):
    if isinstance(b, ResBlock):
        return _res(b, x, temb)
    if isinstance(b, SelfAttention):
        return _attn(b, x)
    if isinstance(b, Downsample):
        return _conv(b.conv, F.pad(x, (0, 1, 0, 1, 0, 1)))
    if isinstance(b, Upsample):
        return _conv(b.conv, F.interpolate(x, scale_factor=2.0, mode="nearest"))
    if isinstance(b, _Head):
        return _conv(b.conv, F.silu(F.group_norm(x, b.norm.num_groups, b.norm.weight, b.norm.bias, b.norm.eps)))
    if isinstance(b, torch.nn.Conv3d):
        return _conv(b, x)
    if isinstance(b, torch.nn.Identity):
        return x
    raise TypeError(type(b))


def encode(ae, x):
    for b in ae.encoder:
        x = _block(b, x)
    return x.chunk(2, dim=1)[0]


def decode(ae, z):
    for b in ae.decoder:
        z = _block(b, z)
    return z


def unet_eps(unet, sample, t, cond):
    x = torch.cat([sample, cond], dim=1)
    steps = torch.full((x.shape[0],), float(t), device=x.device)
    temb = unet.time_embed(timestep_embedding(steps, unet.conv_in.out_channels))
    h = _conv(unet.conv_in, x)
    skips = [h]
    for stage in unet.down:
        for res, attn in zip(stage.res, stage.attn):
            h = _block(attn, _res(res, h, temb))
            skips.append(h)
        if not isinstance(stage.downsample, torch.nn.Identity):
            h = _block(stage.downsample, h)
            skips.append(h)
    h = _res(unet.mid_res2, _attn(unet.mid_attn, _res(unet.mid_res1, h, temb)), temb)
    for stage in unet.up:
        for res, attn in zip(stage.res, stage.attn):
            h = _block(attn, _res(res, torch.cat([h, skips.pop()], dim=1), temb))
        h = _block(stage.upsample, h)
    return _conv(unet.out_conv, F.silu(F.group_norm(h, unet.out_norm.num_groups, unet.out_norm.weight,
                                                    unet.out_norm.bias, unet.out_norm.eps)))


@torch.no_grad()
def harmonize_reference(ae, unet, schedule, scale_factor, source, target, inversion_steps=30, sampling_steps=10):
    """Research-style path for one subject; returns (harmonized volume, seconds per stage)."""
    times = {}
    # on a GPU, wait for the queued kernels before reading the clock
    sync = torch.cuda.synchronize if source.is_cuda else (lambda: None)
    t0 = time.perf_counter()
    cond = encode(ae, target) * scale_factor
    z = encode(ae, source) * scale_factor
    sync()
    times["encode"] = time.perf_counter() - t0
    z = adain(z, cond)

    def eps(zt, t):
        return unet_eps(unet, zt, t, cond)

    t0 = time.perf_counter()
    z = schedule.invert(z, eps, inversion_steps)
    sync()
    times["inversion"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    noisy_image = decode(ae, z / scale_factor)
    sync()
    decode_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    z = schedule.sample(z, eps, sampling_steps)
    sync()
    times["sampling"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = decode(ae, z / scale_factor).clamp(0, 1)
    second_variant = decode(ae, z / scale_factor)
    sync()
    times["decode"] = decode_time + time.perf_counter() - t0
    del noisy_image, second_variant
    return out, times
