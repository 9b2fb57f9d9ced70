import json

import pytest
import torch

from hcld_bids.model import AutoencoderKL


@pytest.mark.parametrize("grid", [(16, 16, 16), (32, 48, 32), (16, 32, 48)])
def test_autoencoder_maps_grid_to_quarter_resolution_latent_and_back(grid, tiny_ae_config):
    ae = AutoencoderKL(**tiny_ae_config).eval()
    x = torch.rand(2, 1, *grid)
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    assert z.shape == (2, 6, *(s // 4 for s in grid))
    assert ae.latent_shape(grid) == (6, *(s // 4 for s in grid))
    assert y.shape == x.shape


def test_default_autoencoder_has_research_network_shape():
    ae = AutoencoderKL()
    cfg = ae.config
    assert cfg["channels"] == [32, 64, 64] and cfg["latent_channels"] == 6 and cfg["num_res_blocks"] == 2
    assert cfg["attention_levels"] == [False, False, True] and ae.downsampling == 4


def test_config_round_trips_through_json(tiny_ae_config):
    ae = AutoencoderKL(**tiny_ae_config)
    again = AutoencoderKL.from_config(json.loads(json.dumps(ae.config)))
    assert again.config == ae.config
    again.load_state_dict(ae.state_dict())  # same parameter names and shapes


def test_encode_is_the_posterior_mean_and_training_forward_samples(tiny_ae_config):
    torch.manual_seed(0)
    ae = AutoencoderKL(**tiny_ae_config)
    x = torch.rand(1, 1, 16, 16, 16)
    ae.eval()
    with torch.no_grad():
        mean, _ = ae.encode_posterior(x)
        torch.testing.assert_close(ae.encode(x), mean)
        recon_eval, _, _ = ae(x)
        torch.testing.assert_close(recon_eval, ae.decode(mean))
    ae.train()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    with torch.no_grad():
        r1, m1, _ = ae(x, generator=g1)
        r2, m2, _ = ae(x, generator=g2)
    torch.testing.assert_close(m1, m2)
    assert not torch.allclose(r1, r2)


def test_inference_with_channels_last_matches_training_path(tiny_ae_config):
    torch.manual_seed(0)
    ae = AutoencoderKL(**tiny_ae_config).eval()
    x = torch.rand(1, 1, 16, 32, 16)
    ref = ae.decode(ae.encode(x)).detach()  # autograd path, default layout
    fast = ae.to(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        out = fast.decode(fast.encode(x.contiguous(memory_format=torch.channels_last_3d)))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


def test_grid_not_divisible_by_the_downsampling_is_refused(tiny_ae_config):
    with pytest.raises(ValueError, match="not divisible"):
        AutoencoderKL(**tiny_ae_config).latent_shape((30, 32, 32))


# ------------------------------------------------------------------- linear path (start from the best linear AE)

S2D = dict(channels=[8], latent_channels=3, num_res_blocks=1, attention_levels=[False], norm_groups=4,
           patch_size=2, mid_attention=False)


def _smooth_volumes(n=3, grid=(16, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    vols = []
    for _ in range(n):
        coarse = torch.rand(1, 1, 4, 4, 4, generator=g)
        vols.append(torch.nn.functional.interpolate(coarse, size=grid, mode="trilinear")[0, 0].numpy())
    return vols


def test_linear_skip_is_recorded_in_the_config_only_when_on():
    assert "linear_skip" not in AutoencoderKL(**S2D).config  # older manifests rebuild unchanged
    ae = AutoencoderKL(**S2D, linear_skip=True)
    assert ae.config["linear_skip"] is True
    again = AutoencoderKL.from_config(json.loads(json.dumps(ae.config)))
    again.load_state_dict(ae.state_dict())
    assert {"skip_in.weight", "skip_out.weight"} <= set(ae.state_dict())


def test_init_linear_skip_starts_at_the_principal_component_reconstruction():
    vols = _smooth_volumes()
    ae = AutoencoderKL(**S2D, linear_skip=True).eval()
    info = ae.init_linear_skip(vols)
    assert 0.9 < info["explained_variance"] <= 1.0
    x = torch.from_numpy(vols[0])[None, None]
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    # the reference: project each 2x2x2 block on the top principal components of all blocks, by hand
    blocks = torch.cat([torch.from_numpy(v).reshape(8, 2, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, 8)
                        for v in vols]).double()
    mu = blocks.mean(0)
    val, vec = torch.linalg.eigh(torch.cov((blocks - mu).T))
    basis = vec[:, torch.argsort(val, descending=True)[:3]]
    mine = x[0, 0].reshape(8, 2, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, 8).double()
    proj = (mine - mu) @ basis @ basis.T + mu
    expect = proj.reshape(8, 8, 8, 2, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(16, 16, 16)
    torch.testing.assert_close(y[0, 0].double(), expect, rtol=0, atol=1e-4)
    # whitened: every latent channel has about unit variance over the blocks it was fitted on
    lat = torch.cat([ae.encode(torch.from_numpy(v)[None, None]).detach().reshape(3, -1) for v in vols], dim=1)
    torch.testing.assert_close(lat.var(dim=1), torch.ones(3), rtol=0.05, atol=0.05)
    # and the linear reconstruction is far better than a random network's
    rand = AutoencoderKL(**S2D).eval()
    with torch.no_grad():
        assert (y - x).abs().mean() < 0.2 * (rand.decode(rand.encode(x)) - x).abs().mean()


def test_init_linear_skip_leaves_the_nonlinear_branches_trainable():
    vols = _smooth_volumes()
    ae = AutoencoderKL(**S2D, linear_skip=True)
    ae.init_linear_skip(vols)
    x = torch.from_numpy(vols[1])[None, None]
    ae.train()
    recon, mean, logvar = ae(x, generator=torch.Generator().manual_seed(0))
    assert torch.all(logvar == -8.0)  # a narrow posterior to start with
    (recon - x).abs().mean().backward()
    assert ae.decoder[-2].conv.weight.grad.abs().sum() > 0  # the zeroed last conv still learns
    assert ae.skip_out.weight.grad.abs().sum() > 0


def test_init_linear_skip_needs_the_linear_path():
    with pytest.raises(ValueError, match="linear_skip=True"):
        AutoencoderKL(**S2D).init_linear_skip(_smooth_volumes(1))


def test_linear_path_stays_float32_under_bfloat16_autocast():
    vols = _smooth_volumes()
    ae = AutoencoderKL(**S2D, linear_skip=True).eval()
    ae.init_linear_skip(vols)
    x = torch.from_numpy(vols[2])[None, None]
    with torch.no_grad():
        ref = ae.decode(ae.encode(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = ae.encode(x)
            y = ae.decode(z)
    # the branches are zero at the start, so the whole reconstruction is the linear path: float32 exactly
    assert z.dtype == torch.float32 and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)


def test_the_gpu_weight_cast_leaves_the_linear_path_in_float32():
    from hcld_bids.model.harmonize import cast_for_autocast

    ae = AutoencoderKL(**S2D, linear_skip=True)
    assert cast_for_autocast(ae) > 0
    assert ae.skip_in.weight.dtype == ae.skip_out.bias.dtype == torch.float32
    assert ae.decoder[0].weight.dtype == torch.bfloat16
