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
