"""Turning the training volumes into batches: random 3D patches, whole volumes, latent crops.

Volumes are any sequence (``len`` and indexing) of ``(D, H, W)`` float32 arrays in [0, 1]; they can be
loaded lazily by the sequence itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def volume_tensor(volume) -> torch.Tensor:
    t = volume if isinstance(volume, torch.Tensor) else torch.from_numpy(np.asarray(volume, dtype=np.float32))
    if t.ndim != 3:
        raise ValueError(f"training volumes must be 3D (D, H, W), got shape {tuple(t.shape)}")
    return t.float()


def random_patch(volume: torch.Tensor, size: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A ``size`` crop of a ``(D, H, W)`` tensor at a random position (zero-padded where the volume is smaller)."""
    pads = []
    for s, p in zip(volume.shape, size):
        short = max(0, p - s)
        pads.append((short // 2, short - short // 2))
    if any(a or b for a, b in pads):
        volume = torch.nn.functional.pad(volume, [x for pair in reversed(pads) for x in pair])
    starts = [int(torch.randint(0, s - p + 1, (1,), generator=generator)) for s, p in zip(volume.shape, size)]
    return volume[tuple(slice(a, a + p) for a, p in zip(starts, size))]


def image_batch(volumes: Sequence, indices: Sequence[int], patch_size: Sequence[int] | None,
                generator: torch.Generator) -> torch.Tensor:
    """``(B, 1, D, H, W)``: patches or whole volumes of the given items (``indices`` None: all of ``volumes``)."""
    items = [volume_tensor(volumes[i]) for i in (range(len(volumes)) if indices is None else indices)]
    if patch_size is not None:
        items = [random_patch(v, patch_size, generator) for v in items]
    elif len({tuple(v.shape) for v in items}) > 1:
        raise ValueError("whole-volume batches need volumes of one grid; set patch_size or batch_size=1")
    return torch.stack(items)[:, None].contiguous()


def random_crop_box(shape: Sequence[int], size: int | None, generator: torch.Generator) -> tuple[slice, ...]:
    """Slices of a random cube of ``size`` voxels per axis (the whole axis when ``size`` is None or larger)."""
    out = []
    for s in shape:
        p = s if size is None else min(size, s)
        a = int(torch.randint(0, s - p + 1, (1,), generator=generator))
        out.append(slice(a, a + p))
    return tuple(out)


def scale_box(box: tuple[slice, ...], factor: int) -> tuple[slice, ...]:
    return tuple(slice(b.start * factor, b.stop * factor) for b in box)
