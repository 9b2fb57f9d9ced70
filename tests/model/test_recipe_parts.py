"""Parts of the CPU training recipe: space-to-depth networks, EMA, resuming with other batch sizes, the
model-space site augmentation and the training-time SSIM."""

import numpy as np
import pytest
import torch

from hcld_bids.model import AutoencoderKL, CheckpointError, DiffusionUNet
from hcld_bids.model.layers import DepthToSpace, SpaceToDepth
from hcld_bids.model.training import AutoencoderTrainConfig, LDMTrainConfig, train_autoencoder, train_ldm

S2D_AE = dict(channels=(8,), latent_channels=2, num_res_blocks=1, attention_levels=(False,), norm_groups=4,
              patch_size=2, mid_attention=False)


def test_space_to_depth_is_a_lossless_fold():
    x = torch.randn(2, 3, 4, 6, 8)
    y = SpaceToDepth(2)(x)
    assert y.shape == (2, 24, 2, 3, 4)
    assert torch.equal(DepthToSpace(2)(y), x)
    # every output channel is one voxel of each 2x2x2 block
    assert torch.equal(y[0, 0], x[0, 0, ::2, ::2, ::2]) and torch.equal(y[0, 7], x[0, 0, 1::2, 1::2, 1::2])
    with pytest.raises(ValueError, match="divisible"):
        SpaceToDepth(2)(torch.randn(1, 1, 3, 4, 4))


def test_space_to_depth_autoencoder_shapes_and_config():
    ae = AutoencoderKL(**S2D_AE).eval()
    assert ae.downsampling == 2 and ae.config["patch_size"] == 2 and ae.config["mid_attention"] is False
    assert not any(type(m).__name__ == "SelfAttention" for m in ae.modules())
    x = torch.rand(1, 1, 16, 24, 16)
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (1, 2, 8, 12, 8)
        recon = ae.decode(z)
        assert recon.shape == x.shape
    with torch.inference_mode():  # the consuming inference path (blocks may overwrite their input) agrees
        again = ae.decode(ae.encode(x.contiguous(memory_format=torch.channels_last_3d)))
    np.testing.assert_allclose(again.numpy(), recon.numpy(), atol=1e-5)
    rebuilt = AutoencoderKL.from_config(ae.config)
    rebuilt.load_state_dict(ae.state_dict())  # the config rebuilds the same network
    # the config of a default network is unchanged (older bundles' manifests keep loading and comparing)
    assert "patch_size" not in AutoencoderKL().config


def test_patchified_unet_shapes():
    unet = DiffusionUNet(in_channels=4, out_channels=2, channels=(8, 8), attention_levels=(False, True),
                         head_channels=8, norm_groups=4, patch_size=2).eval()
    assert unet.downsampling == 4 and unet.config["patch_size"] == 2
    z = torch.randn(2, 2, 8, 12, 8)
    with torch.no_grad():
        assert unet(z, 5, torch.randn_like(z)).shape == z.shape
    with pytest.raises(ValueError, match="divisible"):
        unet(torch.randn(1, 2, 6, 12, 8), 5, torch.randn(1, 2, 6, 12, 8))


def _cfg(**kw):
    base = dict(autoencoder=S2D_AE, steps=6, batch_size=1, lr=1e-3, patch_size=(16, 16, 16), progress=False,
                checkpoint_every=2, adv_weight=0.0)
    base.update(kw)
    return AutoencoderTrainConfig(**base)


def test_ema_weights_are_returned_and_resume_exactly(real_volumes, tmp_path):
    vols = real_volumes[:2]
    full = train_autoencoder(vols, _cfg(ema_decay=0.9), tmp_path / "full", device="cpu")
    part = train_autoencoder(vols, _cfg(ema_decay=0.9), tmp_path / "part", device="cpu", stop_after_steps=3)
    assert not part.complete
    rest = train_autoencoder(vols, _cfg(ema_decay=0.9), tmp_path / "part", device="cpu")
    for (k, a), b in zip(full.autoencoder.state_dict().items(), rest.autoencoder.state_dict().values()):
        assert torch.equal(a, b), k
    plain = train_autoencoder(vols, _cfg(), tmp_path / "plain", device="cpu")
    w_ema = full.autoencoder.state_dict()
    w_plain = plain.autoencoder.state_dict()
    assert any(not torch.equal(w_ema[k], w_plain[k]) for k in w_ema)  # the average is not the last weights


def test_resume_tolerates_batch_size_but_not_architecture(real_volumes, tmp_path):
    vols = real_volumes[:2]
    train_autoencoder(vols, _cfg(), tmp_path / "run", device="cpu", stop_after_steps=2)
    train_autoencoder(vols, _cfg(batch_size=2), tmp_path / "run", device="cpu", stop_after_steps=1)
    other = dict(S2D_AE, channels=(4,))
    with pytest.raises(CheckpointError, match="configuration changed"):
        train_autoencoder(vols, _cfg(autoencoder=other), tmp_path / "run", device="cpu")


def test_checkpoint_of_another_network_is_a_clear_error(real_volumes, tmp_path):
    from hcld_bids.model.training.checkpoint import load_checkpoint, save_checkpoint

    vols = real_volumes[:2]
    train_autoencoder(vols, _cfg(), tmp_path / "run", device="cpu", stop_after_steps=2)
    ckpt = load_checkpoint(tmp_path / "run")
    ckpt["models"]["autoencoder"] = {"nothing": torch.zeros(1)}
    del ckpt["rng"]
    save_checkpoint(tmp_path / "run", ckpt)
    with pytest.raises(CheckpointError, match="does not fit"):
        train_autoencoder(vols, _cfg(), tmp_path / "run", device="cpu")


def test_augmentation_draws_follow_the_step_seed(real_volumes, tmp_path):
    seen = []

    def augment(vol, rng):
        seen.append(float(rng.random()))
        return vol * 0.5

    vols = real_volumes[:2]
    train_autoencoder(vols, _cfg(steps=4, augment_prob=1.0), tmp_path / "a", device="cpu", augment=augment)
    first = list(seen)
    seen.clear()
    train_autoencoder(vols, _cfg(steps=4, augment_prob=1.0), tmp_path / "b", device="cpu", augment=augment)
    assert len(first) == 4 and seen == first
    with pytest.raises(ValueError, match="augment"):
        train_autoencoder(vols, _cfg(augment_prob=0.5), tmp_path / "c", device="cpu")


def test_stage2_ema_unet_is_returned(real_volumes, tmp_path):
    ae = AutoencoderKL(**S2D_AE).eval()
    vols = [v[:16, :24, :16].copy() for v in real_volumes]
    cfg = LDMTrainConfig(unet=dict(channels=(8, 8), attention_levels=(False, False), head_channels=8, norm_groups=4,
                                   in_channels=4, out_channels=2), steps=3, batch_size=2, grad_accum=1,
                         progress=False, grad_weight=0.0, adv_weight=0.0, ema_decay=0.5, same_site_prob=1.0,
                         checkpoint_every=10)
    result = train_ldm(vols, ["a", "a", "b", "b"], cfg, tmp_path, autoencoder=ae, scale_factor=1.0, device="cpu")
    assert result.complete and isinstance(result.unet, DiffusionUNet) and not result.unet.training


def test_restyle_model_volume_changes_style_and_keeps_the_brain(real_volumes):
    from hcld_bids.simulate import SITES, restyle_model_volume

    vol = real_volumes[0].copy()
    vol[vol < 0.1] = 0.0
    brain = vol > 0
    out_b = restyle_model_volume(vol, SITES["siteB"], np.random.default_rng(0))
    out_b2 = restyle_model_volume(vol, SITES["siteB"], np.random.default_rng(0))
    assert np.array_equal(out_b, out_b2) and out_b.dtype == np.float32
    assert not out_b[~brain].any() and 0.0 <= out_b.min() and out_b.max() <= 1.0
    assert np.percentile(out_b[brain], 99.5) == pytest.approx(1.0, abs=0.02)
    # siteB is noisy and blurred: neighbouring voxels differ in another way than in the input
    assert not np.allclose(out_b[brain], vol[brain], atol=0.05)
    assert np.corrcoef(out_b[brain], vol[brain])[0, 1] > 0.5


def test_masked_ssim_equals_scikit_image():
    from skimage.metrics import structural_similarity

    from hcld_bids.model.evaluation import masked_ssim

    rng = np.random.default_rng(1)
    x = rng.random((14, 18, 12))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    m = np.zeros(x.shape, bool)
    m[1:13, 2:17, 1:11] = True
    _, full = structural_similarity(x * m, y * m, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    assert masked_ssim(x, y, m) == pytest.approx(full[m].mean(), abs=1e-9)
    assert masked_ssim(x, x, m) == pytest.approx(1.0)


@pytest.mark.parametrize("style_embedding", [False, True])
def test_stage2_latent_crops_and_timestep_focus(real_volumes, tmp_path, monkeypatch, style_embedding):
    from hcld_bids.model.unet import DiffusionUNet as Unet

    ae = AutoencoderKL(**S2D_AE).eval()
    vols = [v[:16, :24, :16].copy() for v in real_volumes]
    seen = []
    forward = Unet.forward

    def spy(self, sample, timesteps, condition=None, style=None):
        seen.append((tuple(sample.shape), tuple(condition.shape), torch.as_tensor(timesteps).tolist(), style))
        return forward(self, sample, timesteps, condition, style)

    monkeypatch.setattr(Unet, "forward", spy)
    unet = dict(channels=(8, 8), attention_levels=(False, False), head_channels=8, norm_groups=4, in_channels=4,
                out_channels=2, style_embedding=style_embedding)
    cfg = LDMTrainConfig(unet=unet, steps=4, batch_size=2, grad_accum=1, progress=False, grad_weight=0.0,
                         adv_weight=0.0, same_site_prob=1.0, latent_crop=4, timestep_focus=10,
                         timestep_focus_prob=1.0, checkpoint_every=10)
    train_ldm(vols, ["a", "a", "b", "b"], cfg, tmp_path / "a", autoencoder=ae, scale_factor=1.0, device="cpu")
    assert len(seen) == 4
    assert all(s == (2, 2, 4, 4, 4) and c == (2, 2, 4, 4, 4) for s, c, _, _ in seen)  # latent 8x12x8 -> cubes of 4
    assert all(0 <= t < 10 for _, _, ts, _ in seen for t in ts)
    if style_embedding:  # the statistics of the whole condition latent, not of the crop: one of the 4 latents'
        from hcld_bids.model.prototypes import encode_scaled
        from hcld_bids.model.unet import condition_style

        whole = [condition_style(encode_scaled(ae, v, 1.0)) for v in vols]
        for *_, style in seen:
            assert style.shape == (2, 4)
            assert all(any(torch.allclose(row, w[0], atol=1e-4) for w in whole) for row in style)
    else:
        assert all(style is None for *_, style in seen)
    with pytest.raises(ValueError, match="latent_crop"):
        train_ldm(vols, ["a", "a", "b", "b"], LDMTrainConfig(unet=unet, steps=1, latent_crop=4, progress=False),
                  tmp_path / "b", autoencoder=ae, scale_factor=1.0, device="cpu")
