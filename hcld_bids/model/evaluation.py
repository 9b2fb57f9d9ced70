"""Image-quality measures used while training and in the benchmarks, in torch (no scikit-image needed).

:func:`masked_ssim` is the structural similarity of Wang et al. (2004) with a Gaussian window (sigma 1.5
voxels, truncated at 3.5 sigma, reflecting borders, population covariances), averaged over a mask: the same
number as ``skimage.metrics.structural_similarity(x * m, y * m, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, full=True)[1][m].mean()``, which the quality benchmarks report.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5


def _gaussian_kernel(sigma: float, truncate: float, dtype=torch.float64) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _smooth(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``(N, 1, D, H, W)`` with mirrored borders (scipy's 'reflect')."""
    r = (kernel.numel() - 1) // 2
    for axis in range(3):
        # scipy "reflect" repeats the edge voxel (d c b a | a b c d); torch "reflect" does not, so mirror by hand
        x = _pad_symmetric(x, axis, r)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        x = F.conv3d(x, kernel.view(*shape).to(x))
    return x


def _pad_symmetric(x: torch.Tensor, axis: int, r: int) -> torch.Tensor:
    dim = 2 + axis
    n = x.shape[dim]
    idx = torch.arange(-r, n + r)
    idx = torch.where(idx < 0, -idx - 1, idx)
    idx = torch.where(idx >= n, 2 * n - idx - 1, idx)
    idx = idx.clamp(0, n - 1)
    return x.index_select(dim, idx.to(x.device))


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """The SSIM map of two ``(N, 1, D, H, W)`` tensors (differentiable; the window of :func:`masked_ssim`)."""
    k = _gaussian_kernel(SSIM_SIGMA, SSIM_TRUNCATE, dtype=a.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _smooth(a, k), _smooth(b, k)
    saa = _smooth(a * a, k) - mu_a ** 2
    sbb = _smooth(b * b, k) - mu_b ** 2
    sab = _smooth(a * b, k) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))


@torch.no_grad()
def masked_ssim(x, y, mask, data_range: float = 1.0) -> float:
    """Mean SSIM of two ``(D, H, W)`` volumes inside ``mask`` (both images zeroed outside it first)."""
    m = torch.as_tensor(np.asarray(mask) > 0)
    a = torch.as_tensor(np.asarray(x, dtype=np.float64)) * m
    b = torch.as_tensor(np.asarray(y, dtype=np.float64)) * m
    s = ssim_map(a[None, None], b[None, None], data_range)
    return float(s[0, 0][m].mean())
