"""Losses of both training stages and the two discriminators.

Stage 1 (autoencoder): L1 reconstruction, KL, least-squares adversarial loss of a 3D PatchGAN and, in place
of the pretrained 2D perceptual network (which needs a download), a 3D SSIM loss.

Stage 2 (cLDM): noise MSE, content loss between instance-normalised latents, Gram-matrix style loss (or
the mean/std statistic loss), a latent style discriminator with a BCE adversarial term, and an
image-gradient loss inside the brain mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import channel_stats, instance_norm
from .layers import Conv3d

# ---------------------------------------------------------------------------------------------- stage 1


def reconstruction_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(recon.float(), target.float())


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), summed over latent elements and averaged over the batch."""
    mean, logvar = mean.float(), logvar.float()
    return (0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)).flatten(1).sum(1).mean()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur3d(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``(N, C, D, H, W)`` per channel, valid region only."""
    c = x.shape[1]
    k = window.numel()
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k
        x = F.conv3d(x, window.view(*shape).expand(c, 1, *shape[2:]).contiguous(), groups=c)
    return x


def ssim3d(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 7,
           sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of two ``(N, C, D, H, W)`` volumes (Wang et al. 2004, Gaussian window)."""
    x, y = x.float(), y.float()
    win = _gaussian_window(window, sigma, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _blur3d(x, win), _blur3d(y, win)
    sxx = _blur3d(x * x, win) - mu_x.square()
    syy = _blur3d(y * y, win) - mu_y.square()
    sxy = _blur3d(x * y, win) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x.square() + mu_y.square() + c1) * (sxx + syy + c2))
    return ssim.mean()


def ssim_loss(recon: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``1 - SSIM``: the download-free stand-in for the perceptual loss."""
    return 1.0 - ssim3d(recon, target, data_range)


class PatchDiscriminator3D(nn.Module):
    """3D PatchGAN: ``(N, 1, D, H, W) -> (N, 1, D', H', W')`` real/fake logits per patch.

    ``num_layers`` stride-2 4x4x4 convolutions (LeakyReLU 0.2, group norm after the first), a stride-1
    4x4x4 convolution and a stride-1 4x4x4 convolution to one channel.
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, num_layers: int = 3) -> None:
        super().__init__()
        self._config = dict(in_channels=in_channels, channels=channels, num_layers=num_layers)
        layers: list[nn.Module] = [Conv3d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = channels
        for i in range(1, num_layers):
            layers += [Conv3d(c, c * 2, 4, 2, 1, bias=False), nn.GroupNorm(min(8, c * 2), c * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        layers += [Conv3d(c, c, 4, 1, 1, bias=False), nn.GroupNorm(min(8, c), c),
                   nn.LeakyReLU(0.2, inplace=True), Conv3d(c, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    @property
    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lsgan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of the discriminator: ``((D(real) - 1)^2 + D(fake)^2) / 2``."""
    return 0.5 * ((real_logits.float() - 1.0).square().mean() + fake_logits.float().square().mean())


def lsgan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of the generator: ``(D(fake) - 1)^2``."""
    return (fake_logits.float() - 1.0).square().mean()


# ---------------------------------------------------------------------------------------------- stage 2


def noise_loss(eps_hat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(eps_hat.float(), eps.float())


def content_loss(z_source: torch.Tensor, z0_hat: torch.Tensor) -> torch.Tensor:
    """``|IN(z_source) - IN(z0_hat)|^2``: the source layout must survive, whatever the channel statistics."""
    return F.mse_loss(instance_norm(z0_hat.float()), instance_norm(z_source.float()))


def gram_matrix(z: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrix divided by the number of elements: ``(N, C, ...) -> (N, C, C)``."""
    f = z.float().flatten(2)
    return torch.bmm(f, f.transpose(1, 2)) / f[0].numel()


def gram_style_loss(z: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``|G(z) - G(style)|^2``."""
    return F.mse_loss(gram_matrix(z), gram_matrix(style))


def stat_style_loss(z: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Squared differences of the channel means and standard deviations (the alternative style loss)."""
    m1, s1 = channel_stats(z)
    m2, s2 = channel_stats(style)
    return F.mse_loss(m1, m2) + F.mse_loss(s1, s2)


class LatentStyleDiscriminator(nn.Module):
    """Tells target-style latents from source latents: ``(N, C, d, h, w) -> (N,)`` logits.

    Three stride-2 4x4x4 convolutions (LeakyReLU 0.2, group norm after the first; unlike instance norm it
    also works when the last map has a single voxel), global average
    pooling and a linear layer, so it accepts any latent grid of at least 8 voxels per axis.
    """

    def __init__(self, in_channels: int = 6, channels: tuple[int, ...] = (64, 128, 256)) -> None:
        super().__init__()
        self._config = dict(in_channels=in_channels, channels=list(channels))
        layers: list[nn.Module] = []
        c = in_channels
        for i, cout in enumerate(channels):
            layers.append(Conv3d(c, cout, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.GroupNorm(min(8, cout), cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    @property
    def config(self) -> dict:
        return dict(self._config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(z.float()).mean(dim=(2, 3, 4))).squeeze(1)


def bce_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the style discriminator: real = target style, fake = source latents."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def bce_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Adversarial term of the diffusion model: its clean-latent estimates should look like the target."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward differences along D, H and W of ``(N, C, D, H, W)`` (each one voxel shorter on its axis)."""
    return (x[:, :, 1:] - x[:, :, :-1], x[:, :, :, 1:] - x[:, :, :, :-1], x[..., 1:] - x[..., :-1])


def gradient_loss(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of the image gradients of ``x`` and ``y`` inside ``mask``.

    A difference along an axis counts when both of its voxels are inside the mask; the sum is divided by
    the total number of difference voxels (inside or not), so that the loss is comparable between masks
    of different size as a per-voxel quantity of the whole grid.
    """
    x, y = x.float(), y.float()
    total = x.new_zeros(())
    count = 0
    m = None if mask is None else (mask > 0).to(x.dtype)
    for axis, (gx, gy) in enumerate(zip(image_gradients(x), image_gradients(y))):
        diff = (gx - gy).square()
        if m is not None:
            sl_a = [slice(None)] * 5
            sl_b = [slice(None)] * 5
            sl_a[2 + axis] = slice(1, None)
            sl_b[2 + axis] = slice(None, -1)
            diff = diff * (m[tuple(sl_a)] * m[tuple(sl_b)])
        total = total + diff.sum()
        count += diff.numel()
    return total / count
