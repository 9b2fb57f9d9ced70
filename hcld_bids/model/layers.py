"""Building blocks shared by the autoencoder and the diffusion UNet.

Tensors are ``(N, C, D, H, W)``. Every block works in both memory layouts; on CPU the harmonizer uses
``torch.channels_last_3d``, which oneDNN runs about 1.3-2x faster than the default layout.

Two speed/memory devices live here because both networks need them:

* :func:`conv3d` sends float32 CPU convolutions straight to oneDNN. PyTorch only does that itself when
  ``N*C*D*H > 20480``; below it (every convolution of the UNet at a 2 mm latent grid) it falls back to an
  im2col kernel that is 5-10x slower.
* In inference (no autograd) the blocks may consume their input: :func:`run_blocks` hands each block a
  one-element list that the block empties, so the block holds the only reference and can free the input as
  soon as it is no longer needed. At 1 mm a 64-channel full-resolution tensor is 1.26 GB, so keeping the
  input of each block alive would cost gigabytes of peak memory.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

#: Tensors with more elements than this are normalised in place, slab by slab, when a block owns them.
INPLACE_NORM_MIN_NUMEL = 1 << 26
#: Longest sequence for which CPU training uses explicit-matrix attention (L x L floats per head).
MATH_ATTENTION_MAX_LENGTH = 4096


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


class _OneDNNConv3d(torch.autograd.Function):
    """oneDNN 3D convolution with a backward pass that stays on fast kernels.

    ``convolution_backward`` applies the same size heuristic as the forward and, for batch 1 and small
    volumes, runs an im2col kernel 5-20x slower than oneDNN. Here the input gradient of a stride-1
    convolution is itself a convolution (with the flipped, transposed kernel) and the weight gradient of a
    batch-1 input is computed on the input split into two depth halves with their halos (a batch of two,
    which the heuristic sends to oneDNN).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return torch.mkldnn_convolution(x, weight, bias, [padding] * 3, [stride] * 3, [1, 1, 1], 1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        k = weight.shape[-1]
        grad_x = grad_w = grad_b = None
        generic = [s] * 3, [p] * 3, [1] * 3, False, [0] * 3, 1
        if ctx.needs_input_grad[0]:
            if s == 1 and 0 <= k - 1 - p:
                flipped = weight.transpose(0, 1).flip(2, 3, 4).contiguous()
                grad_x = torch.mkldnn_convolution(grad, flipped, None, [k - 1 - p] * 3, [1] * 3, [1] * 3, 1)
            else:
                grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, *generic,
                                                             [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            d = x.shape[2]
            if s == 1 and k == 2 * p + 1 and x.shape[0] == 1 and d % 2 == 0 and d >= 2:
                h = d // 2
                xp = F.pad(x, (0, 0, 0, 0, p, p))
                x2 = torch.cat([xp[:, :, : h + 2 * p], xp[:, :, h:]])
                g2 = torch.cat([grad[:, :, :h], grad[:, :, h:]])
                grad_w = torch.ops.aten.convolution_backward(g2, x2, weight, None, [1] * 3, [0, p, p], [1] * 3, False,
                                                             [0] * 3, 1, [False, True, False])[1]
            else:
                grad_w = torch.ops.aten.convolution_backward(grad, x, weight, None, *generic,
                                                             [False, True, False])[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None, None


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """3D convolution that always uses oneDNN for float32 on CPU, in the forward and the backward pass."""
    if _onednn_ok(x, weight):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _OneDNNConv3d.apply(x, weight, bias, stride, padding)
        return torch.mkldnn_convolution(x, weight, bias, [padding] * 3, [stride] * 3, [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, stride=stride, padding=padding)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state dict) that routes through :func:`conv3d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3d(x, self.weight, self.bias, self.stride[0], self.padding[0])


def _owns(box: list) -> torch.Tensor:
    x = box.pop()
    if box:
        raise RuntimeError("a block was handed a box holding more than one tensor")
    return x


def run_blocks(blocks, x: torch.Tensor, *args) -> torch.Tensor:
    """Apply ``blocks`` in order. Without autograd every block but the first owns (and may free or
    overwrite) its input; ``x`` itself is left untouched."""
    blocks = list(blocks)
    if torch.is_grad_enabled() or not blocks:
        for block in blocks:
            x = block(x, *args) if getattr(block, "takes_temb", False) else block(x)
        return x
    first = blocks[0]
    box = [first(x, *args) if getattr(first, "takes_temb", False) else first(x)]
    del x
    for block in blocks[1:]:
        if hasattr(block, "forward_owned"):
            out = block.forward_owned(box, *args) if getattr(block, "takes_temb", False) else block.forward_owned(box)
        else:
            out = block(_owns(box))
        box.append(out)
        del out
    return box.pop()


def _group_stats_slabbed(x: torch.Tensor, groups: int, eps: float, slab: int):
    """Per-(sample, group) mean and 1/std of ``x`` computed over depth slabs (no full-size temporaries)."""
    n, c = x.shape[:2]
    s1 = torch.zeros(n, c, dtype=torch.float64, device=x.device)
    s2 = torch.zeros(n, c, dtype=torch.float64, device=x.device)
    for d0 in range(0, x.shape[2], slab):
        part = x[:, :, d0:d0 + slab]
        s1 += part.sum(dim=(2, 3, 4), dtype=torch.float64)
        s2 += part.square().sum(dim=(2, 3, 4), dtype=torch.float64)
    count = x[0, 0].numel() * (c // groups)
    mean = s1.view(n, groups, -1).sum(-1) / count
    var = (s2.view(n, groups, -1).sum(-1) / count - mean * mean).clamp_min(0.0)
    return mean, torch.rsqrt(var + eps)


def group_norm_silu_(x: torch.Tensor, norm: nn.GroupNorm, slab: int = 8) -> torch.Tensor:
    """GroupNorm followed by SiLU, written into ``x`` slab by slab (inference only; ``x`` is overwritten)."""
    n, c = x.shape[:2]
    g = norm.num_groups
    mean, inv_std = _group_stats_slabbed(x, g, norm.eps, slab)
    scale = inv_std.repeat_interleave(c // g, dim=1)  # (N, C)
    shift = -mean.repeat_interleave(c // g, dim=1) * scale
    if norm.affine:
        scale = scale * norm.weight.double()
        shift = shift * norm.weight.double() + norm.bias.double()
    scale = scale.to(x.dtype).view(n, c, 1, 1, 1)
    shift = shift.to(x.dtype).view(n, c, 1, 1, 1)
    for d0 in range(0, x.shape[2], slab):
        part = x[:, :, d0:d0 + slab]
        part.mul_(scale).add_(shift)
        F.silu(part, inplace=True)
    return x


def norm_silu(x: torch.Tensor, norm: nn.GroupNorm, owned: bool = False) -> torch.Tensor:
    """``silu(norm(x))``; overwrites ``x`` in place when it is owned, large and autograd is off."""
    if owned and not torch.is_grad_enabled() and x.numel() >= INPLACE_NORM_MIN_NUMEL:
        return group_norm_silu_(x, norm)
    h = norm(x)
    return F.silu(h, inplace=not torch.is_grad_enabled())


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) x 2 plus a 1x1 projection when channels change.

    With ``temb_channels`` the block adds a per-channel shift computed from a time embedding after the
    first convolution (diffusion UNet). Shapes: ``(N, in, D, H, W) -> (N, out, D, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int, norm_eps: float,
                 temb_channels: int | None = None) -> None:
        super().__init__()
        self.takes_temb = temb_channels is not None
        self.norm1 = nn.GroupNorm(norm_groups, in_channels, eps=norm_eps)
        self.conv1 = Conv3d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(norm_groups, out_channels, eps=norm_eps)
        self.conv2 = Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _time_shift(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if self.temb_proj is None:
            return h
        shift = self.temb_proj(F.silu(temb))[:, :, None, None, None].to(h.dtype)
        return h.add_(shift) if not torch.is_grad_enabled() else h + shift

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward(x, temb, owned=False)

    def forward_owned(self, box: list, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward(_owns(box), temb, owned=True)

    def _forward(self, x: torch.Tensor, temb: torch.Tensor | None, owned: bool) -> torch.Tensor:
        if torch.is_grad_enabled():
            h = self.conv1(norm_silu(x, self.norm1))
            h = self._time_shift(h, temb)
            h = self.conv2(norm_silu(h, self.norm2))
            return (x if self.skip is None else self.skip(x)) + h
        # Inference: project the shortcut first so that an owned input can be normalised in place and
        # released before the first convolution allocates its output.
        if self.skip is None:
            residual = x
            h = norm_silu(x, self.norm1)
        else:
            residual = self.skip(x)
            h = norm_silu(x, self.norm1, owned=owned)
        del x
        h = self.conv1(h)
        h = self._time_shift(h, temb)
        h = norm_silu(h, self.norm2, owned=True)
        h = self.conv2(h)
        return h.add_(residual)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all voxels, with GroupNorm before and a residual connection.

    Uses ``scaled_dot_product_attention``, which never builds the ``L x L`` score matrix on CPU (flash
    kernel) nor on CUDA; at 1 mm the deepest autoencoder level has L = 76,800 positions (23.6 GB of scores).
    Shapes: ``(N, C, D, H, W) -> (N, C, D, H, W)``.
    """

    def __init__(self, channels: int, head_channels: int | None, norm_groups: int, norm_eps: float) -> None:
        super().__init__()
        head_channels = head_channels or channels
        if channels % head_channels:
            raise ValueError(f"attention channels {channels} not divisible by head size {head_channels}")
        self.heads = channels // head_channels
        self.norm = nn.GroupNorm(norm_groups, channels, eps=norm_eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d, h, w = x.shape
        length = d * h * w
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(n, length, c)  # a view in channels_last_3d
        q, k, v = self.qkv(tokens).view(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if torch.is_grad_enabled() and x.device.type == "cpu" and length <= MATH_ATTENTION_MAX_LENGTH:
            # the CPU flash-attention backward is ~10x slower than plain matmuls at these sizes
            scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
            out = torch.matmul(scores.softmax(dim=-1), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, c/heads)
        out = self.proj(out.transpose(1, 2).reshape(n, length, c))
        out = out.view(n, d, h, w, c).permute(0, 4, 1, 2, 3)  # channels_last_3d layout, no copy
        return x + out if torch.is_grad_enabled() else out.add_(x)


class Downsample(nn.Module):
    """Halve each spatial axis: zero-pad one voxel at the far end, then a stride-2 3x3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv3d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 1)))

    def forward_owned(self, box: list) -> torch.Tensor:
        x = F.pad(_owns(box), (0, 1, 0, 1, 0, 1))
        return self.conv(x)


# Nearest-neighbour x2 upsampling followed by a 3x3 convolution equals, for each of the two output parities
# of an axis, a 2-tap convolution of the low-resolution input: even outputs see (w0, w1 + w2) on inputs
# (m-1, m), odd outputs see (w0 + w1, w2) on inputs (m, m+1). In 3D that gives eight 2x2x2 kernels run at
# low resolution: 8 instead of 27 taps per output voxel and no 8x larger upsampled copy of the input.
_PARITY_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                             [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # (parity, tap, kernel index)


class Upsample(nn.Module):
    """Double each spatial axis: nearest-neighbour upsampling then a 3x3x3 convolution (computed exactly,
    as eight 2x2x2 convolutions at the input resolution). ``(N, C, D, H, W) -> (N, C, 2D, 2H, 2W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv3d(channels, channels, 3, padding=1)
        self._cache: tuple | None = None

    def parity_kernels(self) -> torch.Tensor:
        """``(8, C_out, C_in, 2, 2, 2)`` kernels, one per output parity (d, h, w) in row-major order."""
        w = self.conv.weight
        if torch.is_grad_enabled():
            self._cache = None
        else:  # the weights of a frozen network do not change between the 40 UNet calls of a volume
            key = (w.data_ptr(), w._version, w.dtype, w.device)
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]
        m = _PARITY_TAPS.to(w)
        k = torch.einsum("pai,qbj,rck,oxijk->pqroxabc", m, m, m, w).reshape(8, *w.shape[:2], 2, 2, 2)
        if not torch.is_grad_enabled():
            self._cache = (key, k)
            return self._cache[1]
        return k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d, h, w = x.shape
        kernels = self.parity_kernels()
        padded = F.pad(x, (1, 1, 1, 1, 1, 1))
        channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        out = torch.empty((n, kernels.shape[1], 2 * d, 2 * h, 2 * w), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        for p, (pd, ph, pw) in enumerate(itertools.product((0, 1), repeat=3)):
            part = conv3d(padded[:, :, pd:pd + d + 1, ph:ph + h + 1, pw:pw + w + 1], kernels[p], self.conv.bias)
            out[:, :, pd::2, ph::2, pw::2] = part  # autograd records this as a slice copy
            del part
        return out


class SpaceToDepth(nn.Module):
    """Fold each ``p x p x p`` block of voxels into channels: ``(N, C, D, H, W) -> (N, C p^3, D/p, H/p, W/p)``.

    Lossless and free of arithmetic: a network that starts with it runs its first convolutions at ``1/p`` of
    the resolution (``p^3`` times fewer positions) while still seeing every voxel.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.factor
        n, c, d, h, w = x.shape
        if d % p or h % p or w % p:
            raise ValueError(f"grid {(d, h, w)} is not divisible by the space-to-depth factor {p}")
        x = x.reshape(n, c, d // p, p, h // p, p, w // p, p).permute(0, 1, 3, 5, 7, 2, 4, 6)
        out = x.reshape(n, c * p ** 3, d // p, h // p, w // p)
        return out.contiguous(memory_format=torch.channels_last_3d) if x.device.type == "cpu" else out.contiguous()


class DepthToSpace(nn.Module):
    """Inverse of :class:`SpaceToDepth`: ``(N, C p^3, d, h, w) -> (N, C, d p, h p, w p)``."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.factor
        n, cp, d, h, w = x.shape
        c = cp // p ** 3
        x = x.reshape(n, c, p, p, p, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(n, c, d * p, h * p, w * p).contiguous()


def level_settings(channels, attention_levels, norm_groups: int) -> tuple[list[int], list[bool]]:
    """Channels and attention flags per level as plain lists, checked against each other and GroupNorm."""
    channels = [int(c) for c in channels]
    attention_levels = [bool(a) for a in attention_levels]
    if len(channels) != len(attention_levels):
        raise ValueError("channels and attention_levels must have the same length")
    if any(c % norm_groups for c in channels):
        raise ValueError(f"every entry of channels {channels} must be divisible by norm_groups={norm_groups}")
    return channels, attention_levels


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``(N,) -> (N, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
