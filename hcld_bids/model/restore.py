"""Restoration prior: a small 3D network that removes a scanner's noise and blur before harmonization.

The harmonizer's linear calibrations (histogram, band spectrum) can blur toward a blurrier site but cannot take
noise or thick-slice blur *out* of a source: that needs a non-linear model. :class:`RestorationNet` is trained
without any paired data, from single preprocessed images: a training image ``x`` of the quietest, sharpest
training site is re-rendered as another scanner would have acquired it (``degraded``, by
:func:`hcld_bids.simulate.restyle_model_volume`: a random site's contrast curve, blur, slice profile and Rician
noise) and as the same scanner without noise and blur (``clean``: the same contrast curve only), and the network
learns ``degraded -> clean``. At inference the harmonizer restores its input first; the target site's own blur
is then put back by the spectral calibration.

Design (measured in benchmarks/RESULTS.md, "Restoration prior"): space-to-depth x2 (the 2 mm grid folded to 8
channels at 4 mm), a 3x3x3 convolution to ``channels``, ``blocks`` residual blocks (two convolutions, SiLU, no
normalisation, so the network is equivariant to the intensity scale it was trained on), a convolution back to
8 channels, depth-to-space; the result is added to the input (the network learns only the correction, and its
last convolution starts at zero, so an untrained network is the identity).

How hard to restore an image can depend on its noise (:func:`estimate_noise`): a clean source loses a little of
its own detail to the prior, a noisy one gains (benchmarks/RESULTS.md, "A restoration weight from the image's
noise").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .evaluation import ssim_map
from .layers import Conv3d, DepthToSpace, SpaceToDepth

__all__ = ["RestorationNet", "degradation_pair", "restore_volume", "estimate_noise", "RestorationTrainer"]


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = Conv3d(channels, channels, 3, padding=1)
        self.conv2 = Conv3d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class RestorationNet(nn.Module):
    """``(N, 1, X, Y, Z) -> (N, 1, X, Y, Z)``, each of X, Y, Z even; output = input + learned correction."""

    def __init__(self, channels: int = 32, blocks: int = 4) -> None:
        super().__init__()
        if channels < 1 or blocks < 0:
            raise ValueError("channels must be positive and blocks non-negative")
        self.config = {"channels": int(channels), "blocks": int(blocks)}
        self.fold = SpaceToDepth(2)
        self.head = Conv3d(8, channels, 3, padding=1)
        self.body = nn.Sequential(*[_Residual(channels) for _ in range(blocks)])
        self.tail = Conv3d(channels, 8, 3, padding=1)
        self.unfold = DepthToSpace(2)
        self.act = nn.SiLU()
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    @classmethod
    def from_config(cls, config: dict) -> "RestorationNet":
        return cls(**config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 1 or any(s % 2 for s in x.shape[2:]):
            raise ValueError(f"expected (N, 1, X, Y, Z) with even X, Y, Z; got {tuple(x.shape)}")
        h = self.body(self.head(self.fold(x)))
        return x + self.unfold(self.tail(self.act(h)))


def degradation_pair(volume: np.ndarray, rng: np.random.Generator, site_effects: Sequence | None = None,
                     random_prob: float = 0.5, realistic: bool = False,
                     clean_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(degraded, clean)`` renderings of one preprocessed model-grid volume (values in [0, 1], zero outside
    the brain) for training: a site drawn from ``site_effects`` (default: the built-in simulated sites; with
    probability ``random_prob`` a random one from :func:`hcld_bids.simulate.random_site`) with all its effects,
    and the same site's contrast curve without noise and blur. Both are rescaled as the preprocessing rescales
    the degraded one (its brain percentiles to 0 / 1), so that the network learns to remove noise and blur,
    not a global change of intensity (the harmonizer's histogram calibration does that).

    ``realistic`` renders what reaches the model grid after a scan at 1 mm and the preprocessing: the noise
    scaled by a random factor in [0.3, 1] (resampling to 2 mm averages part of it away), thick slices sampled
    and interpolated back, and a residual bias field of up to 8 % (what N4 leaves) in the degraded image only.
    With probability ``clean_prob`` the scanner adds no noise and no blur (the pair is the same image twice), so
    that the network learns to leave clean images alone."""
    from hcld_bids.preproc.intensity import scale_intensity, scaling_reference
    from hcld_bids.simulate import SITES, bias_field, random_site, restyle_unscaled

    effects = list(SITES.values()) if site_effects is None else list(site_effects)
    if not effects or rng.random() < random_prob:
        effect = random_site("augment", rng)
    else:
        effect = effects[int(rng.integers(len(effects)))]
    if clean_prob > 0 and rng.random() < clean_prob:
        effect = replace(effect, noise=0.0, blur_fwhm_mm=(0.0, 0.0, 0.0), slice_thickness_mm=0.0)
    vol = np.asarray(volume, dtype=np.float32)
    if realistic:
        effect = replace(effect, noise=effect.noise * float(rng.uniform(0.3, 1.0)))
    degraded = restyle_unscaled(vol, effect, rng, resample_slices=realistic)
    if degraded is None:
        return vol.copy(), vol.copy()
    if realistic:
        degraded = degraded * bias_field(vol.shape, np.diag([2.0, 2.0, 2.0, 1.0]), float(rng.uniform(0.0, 0.08)),
                                         float(rng.uniform(60.0, 150.0)), rng)
    clean = restyle_unscaled(vol, replace(effect, noise=0.0, blur_fwhm_mm=(0.0, 0.0, 0.0), slice_thickness_mm=0.0),
                             rng)
    brain = vol > 0
    low, high = scaling_reference(degraded, brain)
    out = []
    for v in (degraded, clean):
        v = scale_intensity(v, low, high)
        v[~brain] = 0.0
        out.append(v.astype(np.float32))
    return out[0], out[1]


def _pad_even(vol: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    pads = [(0, s % 2) for s in vol.shape]
    return np.pad(vol, pads, mode="constant"), tuple(slice(0, s) for s in vol.shape)


@torch.no_grad()
def restore_volume(net: RestorationNet, vol: np.ndarray, mask: np.ndarray | None = None,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """The restored volume (float32, same shape), clipped to [0, 1] and zero outside ``mask`` (default:
    ``vol > 0``)."""
    vol = np.asarray(vol, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    mask = vol > 0 if mask is None else np.asarray(mask) > 0
    padded, crop = _pad_even(vol)
    x = torch.from_numpy(padded)[None, None].to(device)
    out = net.eval()(x)[0, 0].float().cpu().numpy()[crop]
    return np.where(mask, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)


def estimate_noise(vol: np.ndarray, mask: np.ndarray) -> float:
    """The standard deviation of the image's noise, in its intensity units: scikit-image's wavelet estimate
    (``estimate_sigma``: the median absolute value of the finest diagonal wavelet coefficients / 0.6745) over the
    bounding box of the brain ``mask``, voxels outside the mask set to zero. 0 for an empty mask. The brain's edge
    adds to it a little (more for a small brain on a coarse grid), so a threshold on it is chosen on real images."""
    from scipy.ndimage import find_objects
    from skimage.restoration import estimate_sigma

    brain = np.asarray(mask) > 0
    if brain.ndim != 3 or brain.shape != np.shape(vol):
        raise ValueError(f"expected a 3D volume and a mask of its shape, got {np.shape(vol)} and {brain.shape}")
    if not brain.any():
        return 0.0
    box = find_objects(brain.astype(np.uint8))[0]
    return float(estimate_sigma(np.asarray(vol, dtype=np.float64)[box] * brain[box]))


@dataclass
class RestorationTrainer:
    """L1 on brain voxels of random ``patch``-cubed crops of freshly degraded training volumes; with
    ``ssim_weight`` ``w`` > 0 the loss is ``(1 - w) L1 + w (1 - SSIM)``, the SSIM (window of
    :func:`hcld_bids.model.evaluation.masked_ssim`) averaged over the crop's brain voxels.

    ``volumes`` and ``masks`` are the clean-site training images; every step draws ``batch`` volumes, one
    :func:`degradation_pair` each (``site_effects``, ``random_prob``, ``realistic``,
    ``clean_prob``), and one crop each. AdamW with a cosine
    learning rate over ``steps``, gradients clipped to norm 1.
    """

    net: RestorationNet
    volumes: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    steps: int
    batch: int = 2
    patch: int = 48
    lr: float = 1e-3
    seed: int = 0
    step: int = 0
    site_effects: Sequence | None = None
    random_prob: float = 0.5
    realistic: bool = False
    clean_prob: float = 0.0
    ssim_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ValueError(f"ssim_weight must be in [0, 1], got {self.ssim_weight}")
        if not self.volumes or len(self.volumes) != len(self.masks):
            raise ValueError("need as many masks as volumes, and at least one volume")
        if self.patch % 2 or self.patch < 4:
            raise ValueError("patch must be an even size of at least 4")
        self.rng = np.random.default_rng(self.seed)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=0.0)

    def learning_rate(self, step: int) -> float:
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(step, self.steps) / max(self.steps, 1)))

    def _crop(self, shape) -> tuple[slice, ...]:
        return tuple(slice(o, o + min(self.patch, s)) for o, s in
                     ((int(self.rng.integers(0, max(s - self.patch, 0) + 1)), s) for s in shape))

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xs, ys, ms = [], [], []
        for _ in range(self.batch):
            i = int(self.rng.integers(len(self.volumes)))
            degraded, clean = degradation_pair(self.volumes[i], self.rng, self.site_effects, self.random_prob,
                                               self.realistic, self.clean_prob)
            sl = self._crop(degraded.shape)
            xs.append(degraded[sl]), ys.append(clean[sl]), ms.append(self.masks[i][sl])
        as_t = (lambda a: torch.from_numpy(np.stack(a).astype(np.float32))[:, None])
        return as_t(xs), as_t(ys), as_t(ms)

    def train_step(self) -> float:
        x, y, m = self.sample()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.net.train()
        out = self.net(x)
        voxels = m.sum().clamp_min(1.0)
        loss = ((out - y).abs() * m).sum() / voxels
        if self.ssim_weight > 0:
            ssim = (ssim_map(out * m, y * m) * m).sum() / voxels
            loss = (1.0 - self.ssim_weight) * loss + self.ssim_weight * (1.0 - ssim)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def run(self, until: int | None = None, deadline: Callable[[], bool] | None = None,
            on_step: Callable[[int, float], None] | None = None) -> int:
        """Train until step ``until`` (default ``steps``) or until ``deadline()`` is true; returns the step."""
        until = self.steps if until is None else min(until, self.steps)
        while self.step < until and not (deadline and deadline()):
            loss = self.train_step()
            if on_step:
                on_step(self.step, loss)
        return self.step
