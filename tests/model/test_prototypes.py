import numpy as np
import torch

from hcld_bids.model import channel_stats, compute_site_prototype
from hcld_bids.model.prototypes import compute_scale_factor, encode_scaled, prototype_from_latents


def test_prototype_is_the_voxelwise_mean_of_scaled_latents_with_mean_per_image_stats(tiny_models):
    ae, _ = tiny_models
    vols = [np.random.default_rng(i).random((16, 16, 16), dtype=np.float32) for i in range(3)]
    proto = compute_site_prototype(ae, iter(vols), 2.0)
    z = torch.cat([encode_scaled(ae, v, 2.0) for v in vols])
    torch.testing.assert_close(proto.latent, z.mean(0, keepdim=True), rtol=1e-5, atol=1e-6)
    m, s = channel_stats(z)
    torch.testing.assert_close(proto.channel_mean, m.mean(0).flatten(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(proto.channel_std, s.mean(0).flatten(), rtol=1e-5, atol=1e-6)
    assert proto.count == 3
    again = prototype_from_latents(z)
    torch.testing.assert_close(again.latent, proto.latent, rtol=1e-5, atol=1e-6)


def test_scale_factor_gives_unit_std_latents(tiny_models):
    ae, _ = tiny_models
    vols = [np.random.default_rng(i).random((16, 16, 16), dtype=np.float32) for i in range(2)]
    sf = compute_scale_factor(ae, vols)
    z = torch.cat([encode_scaled(ae, v, sf).flatten() for v in vols])
    assert abs(float(z.std()) - 1.0) < 1e-4
