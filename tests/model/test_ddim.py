import math

import pytest
import torch

from hcld_bids.model import NoiseSchedule


def test_training_schedule_is_scaled_linear_from_0_0015_to_0_0195():
    s = NoiseSchedule()
    assert s.num_train_timesteps == 1000 and s.betas.shape == (1000,)
    t = torch.arange(1000, dtype=torch.float64)
    expected = (math.sqrt(0.0015) + t / 999 * (math.sqrt(0.0195) - math.sqrt(0.0015))) ** 2
    torch.testing.assert_close(s.betas, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - expected, 0), rtol=1e-12, atol=1e-15)
    assert s.alphas_cumprod[0] == pytest.approx(1 - 0.0015)


def test_add_noise_and_predict_z0_follow_the_forward_process():
    s = NoiseSchedule()
    z0, eps = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    t = torch.tensor([0, 400, 999])
    zt = s.add_noise(z0, eps, t)
    for i, ti in enumerate(t.tolist()):
        a = float(s.alphas_cumprod[ti])
        torch.testing.assert_close(zt[i], math.sqrt(a) * z0[i] + math.sqrt(1 - a) * eps[i])
    torch.testing.assert_close(s.predict_z0(zt, eps, t), z0, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n,t_end", [(30, None), (10, None), (7, 500), (1, 999)])
def test_ddim_timesteps_are_rounded_even_subsamples_of_the_training_schedule(n, t_end):
    s = NoiseSchedule()
    ts = s.ddim_timesteps(n, t_end)
    end = 999 if t_end is None else t_end
    assert ts.tolist() == [round(i * end / n) for i in range(n + 1)]
    assert ts[0] == 0 and ts[-1] == end and bool((ts[1:] > ts[:-1]).all())


def test_ten_and_thirty_step_grids_share_their_end_points():
    s = NoiseSchedule()
    assert s.ddim_timesteps(30)[-1] == s.ddim_timesteps(10)[-1] == 999
    assert s.ddim_timesteps(10).tolist()[:3] == [0, 100, 200]


def test_steps_in_the_wrong_direction_are_refused():
    s = NoiseSchedule()
    z = torch.zeros(1)
    with pytest.raises(ValueError):
        s.step(z, 100, 200, z)
    with pytest.raises(ValueError):
        s.inversion_step(z, 200, 100, z)


@pytest.mark.parametrize("n_f,n_r", [(30, 30), (30, 10), (5, 17)])
def test_inversion_then_sampling_is_exact_for_a_noise_predictor_independent_of_the_latent(n_f, n_r):
    # With eps(z, t) = e fixed, every DDIM move keeps z0_hat unchanged, so the round trip is exact. The clean
    # latent sits at timestep 0, so z0_hat = (z0 - sqrt(1 - abar_0) e) / sqrt(abar_0).
    s = NoiseSchedule()
    torch.manual_seed(0)
    z0, e = torch.randn(2, 6, 4, 4, 4), torch.randn(2, 6, 4, 4, 4)
    zT = s.invert(z0, lambda z, t: e, n_f)
    a0, a = float(s.alphas_cumprod[0]), float(s.alphas_cumprod[999])
    x = (z0 - math.sqrt(1 - a0) * e) / math.sqrt(a0)
    torch.testing.assert_close(zT, math.sqrt(a) * x + math.sqrt(1 - a) * e, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.sample(zT, lambda z, t: e, n_r), z0, rtol=1e-4, atol=1e-4)


def _gaussian_eps(s, mu, sigma):
    """The exact noise predictor of data z0 ~ N(mu, sigma^2) elementwise."""
    def eps(z, t):
        a = float(s.alphas_cumprod[t])
        return math.sqrt(1 - a) * (z - math.sqrt(a) * mu) / (a * sigma ** 2 + 1 - a)
    return eps


def test_inversion_then_sampling_returns_gaussian_data_within_the_ddim_discretisation_error():
    # DDIM is a first-order solver of the probability-flow ODE: with the exact predictor of Gaussian data
    # (mean 0.5, std 1) the round trip 30 + 30 steps returns z0 within 12 % (relative L2), and the error
    # shrinks about in proportion to the step size.
    s = NoiseSchedule()
    torch.manual_seed(0)
    z0 = 0.5 + torch.randn(20000, dtype=torch.float64)
    eps = _gaussian_eps(s, 0.5, 1.0)

    def err(n):
        return float((s.sample(s.invert(z0, eps, n), eps, n) - z0).norm() / z0.norm())

    e30, e100 = err(30), err(100)
    assert e30 < 0.12
    assert e100 < 0.4 * e30
    zT = s.invert(z0, eps, 100)
    assert abs(float(zT.std()) - 1.0) < 0.03 and abs(float(zT.mean())) < 0.03  # inverted to ~N(0, 1)
