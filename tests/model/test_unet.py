import json

import pytest
import torch

from hcld_bids.model import AutoencoderKL, DiffusionUNet


@pytest.mark.parametrize("latent", [(4, 4, 4), (8, 12, 8), (20, 24, 20), (4, 8, 12)])
def test_unet_predicts_noise_of_latent_shape_for_grids_divisible_by_16_in_image_space(latent, tiny_models):
    _, unet = tiny_models
    z, c = torch.randn(2, 6, *latent), torch.randn(2, 6, *latent)
    with torch.no_grad():
        eps = unet(z, torch.tensor([3, 900]), c)
    assert eps.shape == z.shape


def test_latent_grid_not_divisible_by_four_is_refused(tiny_models):
    _, unet = tiny_models
    with pytest.raises(ValueError, match="not divisible"):
        unet(torch.randn(1, 6, 6, 8, 8), 10, torch.randn(1, 6, 6, 8, 8))


def test_default_unet_has_research_network_shape():
    cfg = DiffusionUNet().config
    assert cfg["channels"] == [32, 64, 64] and cfg["num_res_blocks"] == 1
    assert cfg["attention_levels"] == [False, True, True] and cfg["head_channels"] == 64
    assert cfg["in_channels"] == 12 and cfg["out_channels"] == 6


def test_fresh_unet_predicts_zero_noise(tiny_unet_config):
    unet = DiffusionUNet(**tiny_unet_config)
    with torch.no_grad():
        assert torch.count_nonzero(unet(torch.randn(1, 6, 4, 4, 4), 5, torch.randn(1, 6, 4, 4, 4))) == 0


def test_condition_argument_equals_concatenated_input(tiny_models):
    _, unet = tiny_models
    z, c = torch.randn(1, 6, 4, 8, 4), torch.randn(1, 6, 4, 8, 4)
    with torch.no_grad():
        torch.testing.assert_close(unet(z, 7, c), unet(torch.cat([z, c], 1), 7))


def test_output_depends_on_timestep_and_condition(tiny_models):
    _, unet = tiny_models
    z, c = torch.randn(1, 6, 4, 4, 4), torch.randn(1, 6, 4, 4, 4)
    with torch.no_grad():
        base = unet(z, 10, c)
        assert not torch.allclose(base, unet(z, 500, c))
        assert not torch.allclose(base, unet(z, 10, c + 1))


def test_config_round_trips_through_json(tiny_unet_config):
    unet = DiffusionUNet(**tiny_unet_config)
    again = DiffusionUNet.from_config(json.loads(json.dumps(unet.config)))
    again.load_state_dict(unet.state_dict())


@pytest.mark.parametrize("make", [
    lambda **kw: DiffusionUNet(norm_groups=8, **kw),
    lambda **kw: AutoencoderKL(norm_groups=8, **kw),
], ids=["unet", "autoencoder"])
def test_networks_reject_inconsistent_level_settings(make):
    with pytest.raises(ValueError, match="same length"):
        make(channels=(16, 32, 32), attention_levels=(False, True))
    with pytest.raises(ValueError, match="divisible by norm_groups=8"):
        make(channels=(16, 20, 32), attention_levels=(False, False, True))


def test_style_embedding_reads_the_condition_statistics_and_starts_as_the_plain_network(tiny_unet_config):
    from hcld_bids.model.unet import condition_style

    torch.manual_seed(0)
    plain = DiffusionUNet(**tiny_unet_config)
    styled = DiffusionUNet(**tiny_unet_config, style_embedding=True)
    assert styled.config["style_embedding"] and "style_embedding" not in plain.config  # older manifests unchanged
    missing = set(styled.state_dict()) - set(plain.state_dict())
    assert missing and all(k.startswith("style_embed.") for k in missing)
    styled.load_state_dict({**styled.state_dict(), **plain.state_dict()})
    torch.nn.init.normal_(plain.out_conv.weight, std=0.1)  # a network whose output is not zero
    torch.nn.init.normal_(styled.out_conv.weight, std=0.1)
    styled.out_conv.weight.data.copy_(plain.out_conv.weight)
    z, c = torch.randn(2, 6, 4, 4, 4), torch.randn(2, 6, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(styled(z, 10, c), plain(z, 10, c))  # the zeroed last layer adds nothing
        torch.nn.init.normal_(styled.style_embed[2].weight, std=0.5)
        base = styled(z, 10, c)
        # the statistics of the whole condition can be passed for a crop, and are the default otherwise
        torch.testing.assert_close(styled(z, 10, c, condition_style(c)), base)
        assert not torch.allclose(styled(z, 10, c, condition_style(c * 2 + 1)), base)
        # the statistics: channel means, then log standard deviations
        stats = condition_style(c)
        assert stats.shape == (2, 12)
        torch.testing.assert_close(stats[:, :6], c.flatten(2).mean(2))
        torch.testing.assert_close(stats[:, 6:].exp(), c.flatten(2).std(2, correction=0), rtol=1e-4, atol=1e-4)
    again = DiffusionUNet.from_config(json.loads(json.dumps(styled.config)))
    again.load_state_dict(styled.state_dict())
