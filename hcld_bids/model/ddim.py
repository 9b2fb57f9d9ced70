"""Noise schedule of training and deterministic DDIM sampling / inversion on a subsampled timestep grid.

Notation (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"): ``beta_t`` the per-step noise variance,
``alpha_t = 1 - beta_t``, ``abar_t = prod_{s <= t} alpha_s``.

* Training schedule, "scaled linear": ``beta_t = (sqrt(b0) + t / (T - 1) * (sqrt(b1) - sqrt(b0)))^2`` for
  ``t = 0 .. T - 1`` (T = 1000, b0 = 0.0015, b1 = 0.0195 by default).
* Forward process (DDPM eq. 4): ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``.
* Clean-latent estimate (DDPM eq. 15): ``z0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``.
* DDIM move with eta = 0 (DDIM eq. 12), from timestep ``t`` to ``s`` (``s < t`` samples, ``s > t`` inverts):
  ``z_s = sqrt(abar_s) z0_hat + sqrt(1 - abar_s) eps_hat`` with ``eps_hat = model(z_t, t)``.
* Subsampled grid for ``n`` steps ending at ``t_end``: ``tau_i = round(i * t_end / n)``, ``i = 0 .. n``.
  Inversion walks ``tau_0 -> tau_n`` and sampling ``tau_n -> tau_0``; both call the model ``n`` times and
  share the end points, so any number of inversion steps can be followed by any number of sampling steps.
  The clean latent is taken to sit at ``tau_0 = 0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class NoiseSchedule:
    """The T-step training schedule and the DDIM steps built on it.

    Args:
        num_train_timesteps: T.
        beta_start / beta_end: ``beta_0`` and ``beta_{T-1}``.
        schedule: ``"scaled_linear"`` (linear in sqrt(beta)) or ``"linear"``.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195,
                 schedule: str = "scaled_linear") -> None:
        if schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
        elif schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"unknown noise schedule {schedule!r}; use 'scaled_linear' or 'linear'")
        self._config = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                            schedule=schedule)
        self.num_train_timesteps = num_train_timesteps
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float64, (T,)

    @property
    def config(self) -> dict:
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        return cls(**config)

    def _abar(self, t, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` broadcast to ``like``'s shape (``t`` a scalar or one timestep per sample)."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        abar = self.alphas_cumprod[t].to(device=like.device, dtype=torch.float32)
        return abar.view(-1, *([1] * (like.ndim - 1))) if abar.ndim else abar

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``sqrt(abar_t) z0 + sqrt(1 - abar_t) noise``; ``timesteps`` scalar or ``(N,)``."""
        abar = self._abar(timesteps, z0)
        return abar.sqrt() * z0 + (1.0 - abar).sqrt() * noise

    def predict_z0(self, z_t: torch.Tensor, eps: torch.Tensor, timesteps, clip: float | None = None) -> torch.Tensor:
        """``(z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, optionally clamped to ``[-clip, clip]``."""
        abar = self._abar(timesteps, z_t)
        z0 = (z_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()
        return z0 if clip is None else z0.clamp(-clip, clip)

    def ddim_timesteps(self, num_steps: int, t_end: int | None = None) -> torch.Tensor:
        """``num_steps + 1`` increasing training timesteps ``round(i * t_end / num_steps)``, from 0 to t_end."""
        t_end = self.num_train_timesteps - 1 if t_end is None else int(t_end)
        if not 1 <= num_steps <= t_end:
            raise ValueError(f"number of DDIM steps must be between 1 and {t_end}, got {num_steps}")
        if not 0 < t_end < self.num_train_timesteps:
            raise ValueError(f"t_end must be in 1..{self.num_train_timesteps - 1}, got {t_end}")
        i = torch.arange(num_steps + 1, dtype=torch.float64)
        return torch.round(i * t_end / num_steps).long()

    def ddim_move(self, z_t: torch.Tensor, eps: torch.Tensor, t: int, s: int, clip: float | None = None) -> torch.Tensor:
        """Deterministic DDIM update (eta = 0) of ``z_t`` from timestep ``t`` to ``s`` given ``eps = model(z_t, t)``.

        With ``clip`` the clean-latent estimate is clamped to ``[-clip, clip]`` first (this makes the update
        lossy: inversion followed by sampling no longer returns the start).
        """
        abar_t = float(self.alphas_cumprod[t])
        abar_s = float(self.alphas_cumprod[s])
        if clip is not None:
            z0 = ((z_t - (1.0 - abar_t) ** 0.5 * eps) / abar_t ** 0.5).clamp_(-clip, clip)
            return z0.mul_(abar_s ** 0.5).add_(eps, alpha=(1.0 - abar_s) ** 0.5)
        # z_s = sqrt(abar_s) * z0_hat + sqrt(1 - abar_s) * eps, with z0_hat from z_t and eps, folded into
        # one multiply-add so the update costs two passes over the latent.
        a = (abar_s / abar_t) ** 0.5
        b = (1.0 - abar_s) ** 0.5 - a * (1.0 - abar_t) ** 0.5
        return torch.add(z_t, eps, alpha=b / a).mul_(a) if not torch.is_grad_enabled() else a * z_t + b * eps

    def step(self, eps: torch.Tensor, t: int, t_prev: int, z_t: torch.Tensor, clip: float | None = None) -> torch.Tensor:
        """One DDIM sampling step ``z_t -> z_{t_prev}`` (``t_prev < t``)."""
        if not t_prev < t:
            raise ValueError(f"a sampling step goes down in time, got {t} -> {t_prev}")
        return self.ddim_move(z_t, eps, t, t_prev, clip)

    def inversion_step(self, eps: torch.Tensor, t: int, t_next: int, z_t: torch.Tensor,
                       clip: float | None = None) -> torch.Tensor:
        """One DDIM inversion step ``z_t -> z_{t_next}`` (``t_next > t``), eps evaluated at ``(z_t, t)``."""
        if not t_next > t:
            raise ValueError(f"an inversion step goes up in time, got {t} -> {t_next}")
        return self.ddim_move(z_t, eps, t, t_next, clip)

    def invert(self, z0: torch.Tensor, eps_model: Callable[[torch.Tensor, int], torch.Tensor], num_steps: int,
               t_end: int | None = None, callback: Callable[[int], None] | None = None,
               clip: float | None = None) -> torch.Tensor:
        """DDIM inversion of a clean latent to ``t_end`` in ``num_steps`` model calls."""
        ts = self.ddim_timesteps(num_steps, t_end).tolist()
        z = z0
        for i in range(num_steps):
            z = self.inversion_step(eps_model(z, ts[i]), ts[i], ts[i + 1], z, clip)
            if callback is not None:
                callback(i)
        return z

    def sample(self, z_end: torch.Tensor, eps_model: Callable[[torch.Tensor, int], torch.Tensor], num_steps: int,
               t_end: int | None = None, callback: Callable[[int], None] | None = None,
               clip: float | None = None) -> torch.Tensor:
        """DDIM sampling from ``t_end`` down to timestep 0 in ``num_steps`` model calls."""
        ts = self.ddim_timesteps(num_steps, t_end).tolist()
        z = z_end
        for i in range(num_steps, 0, -1):
            z = self.step(eps_model(z, ts[i]), ts[i], ts[i - 1], z, clip)
            if callback is not None:
                callback(num_steps - i)
        return z
