import pytest
import torch

from hcld_bids.model import losses


def test_gram_loss_is_zero_on_identical_inputs_and_positive_otherwise():
    torch.manual_seed(0)
    z = torch.randn(2, 6, 4, 5, 4)
    assert losses.gram_style_loss(z, z.clone()) == 0
    assert losses.gram_style_loss(z, z * 1.5) > 0
    assert losses.gram_style_loss(z, torch.randn_like(z)) > 0


def test_gram_matrix_is_normalised_by_the_number_of_elements():
    z = torch.ones(1, 2, 3, 3, 3)
    torch.testing.assert_close(losses.gram_matrix(z), torch.full((1, 2, 2), 27 / 54))


def test_stat_style_loss_ignores_layout_but_not_statistics():
    torch.manual_seed(0)
    z = torch.randn(1, 6, 4, 4, 4)
    shuffled = z.flatten(2)[:, :, torch.randperm(64)].view_as(z)
    assert losses.stat_style_loss(z, shuffled) < 1e-10
    assert losses.stat_style_loss(z, z * 2 + 1) > 0.1


def test_content_loss_ignores_channel_affine_changes_but_not_layout():
    torch.manual_seed(0)
    z = torch.randn(1, 6, 4, 4, 4)
    assert losses.content_loss(z, z * 3 - 2) < 1e-8
    assert losses.content_loss(z, torch.randn_like(z)) > 0.5


def test_gradient_loss_counts_only_differences_inside_the_mask():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 8, 8, 8)
    mask = torch.zeros_like(x)
    mask[..., 2:6, 2:6, 2:6] = 1
    y = x.clone()
    y[..., 7, 7, 7] += 5  # outside the mask
    assert losses.gradient_loss(x, y, mask) == 0
    y[..., 3, 3, 3] += 1  # inside
    assert losses.gradient_loss(x, y, mask) > 0
    assert losses.gradient_loss(x, x + 0.3, mask) < 1e-12  # gradients ignore a constant offset


def test_ssim_is_one_for_identical_volumes_and_lower_for_noisy_ones():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16, 16)
    assert losses.ssim3d(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert losses.ssim_loss(x, x + 0.3 * torch.randn_like(x)) > 0.1


def test_kl_loss_is_zero_for_a_standard_normal_posterior():
    assert losses.kl_loss(torch.zeros(2, 6, 2, 2, 2), torch.zeros(2, 6, 2, 2, 2)) == 0
    assert losses.kl_loss(torch.ones(2, 6, 2, 2, 2), torch.zeros(2, 6, 2, 2, 2)) == pytest.approx(24.0)


def test_discriminators_give_patch_and_per_sample_logits():
    d = losses.PatchDiscriminator3D(1, 8, 3)
    assert d(torch.rand(2, 1, 32, 32, 32)).shape[:2] == (2, 1)
    s = losses.LatentStyleDiscriminator(6, (8, 16, 16))
    assert s(torch.randn(3, 6, 8, 12, 8)).shape == (3,)
    assert s(torch.randn(1, 6, 20, 24, 20)).shape == (1,)


def test_adversarial_losses_prefer_the_right_labels():
    hi, lo = torch.full((4,), 5.0), torch.full((4,), -5.0)
    assert losses.bce_discriminator_loss(hi, lo) < losses.bce_discriminator_loss(lo, hi)
    assert losses.bce_generator_loss(hi) < losses.bce_generator_loss(lo)
    one, zero = torch.ones(4), torch.zeros(4)
    assert losses.lsgan_discriminator_loss(one, zero) == 0
    assert losses.lsgan_generator_loss(one) == 0 and losses.lsgan_generator_loss(zero) == 1
