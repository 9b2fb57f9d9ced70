import pytest
import torch
import torch.nn.functional as F

from hcld_bids.model import layers
from hcld_bids.model.layers import ResBlock, SelfAttention, Upsample, conv3d, group_norm_silu_, run_blocks


@pytest.mark.parametrize("n,shape,k,stride,pad", [(1, (6, 5, 4), 3, 1, 1), (2, (6, 5, 4), 3, 1, 1),
                                                  (1, (7, 5, 4), 3, 1, 1), (1, (6, 5, 4), 1, 1, 0),
                                                  (1, (7, 6, 5), 3, 2, 0), (1, (8, 6, 6), 4, 1, 1),
                                                  (1, (8, 6, 6), 4, 2, 1)])
def test_conv3d_matches_torch_conv_in_values_and_gradients(n, shape, k, stride, pad):
    torch.manual_seed(0)
    x = torch.randn(n, 4, *shape, dtype=torch.float32, requires_grad=True)
    w = torch.randn(6, 4, k, k, k, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    y, ref = conv3d(x, w, b, stride, pad), F.conv3d(x, w, b, stride, pad)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad((y * g).sum(), [x, w, b]), torch.autograd.grad((ref * g).sum(), [x, w, b])):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_upsample_equals_nearest_then_conv_including_gradients():
    torch.manual_seed(0)
    up = Upsample(5).double()
    x = torch.randn(2, 5, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    ref = up.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    out = up(x)
    assert out.shape == (2, 5, 6, 8, 10)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad((out * g).sum(), [x, up.conv.weight]),
                    torch.autograd.grad((ref * g).sum(), [x, up.conv.weight])):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_upsample_keeps_channels_last_layout_in_inference():
    up = Upsample(4)
    x = torch.randn(1, 4, 3, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        out = up(x)
        ref = up.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_inplace_group_norm_silu_equals_group_norm_then_silu():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 8, 9, 6, 5) * 3 + 2
    ref = F.silu(norm(x))
    with torch.no_grad():
        out = group_norm_silu_(x.clone(), norm, slab=4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_owned_blocks_give_the_same_result_as_the_autograd_path(monkeypatch):
    monkeypatch.setattr(layers, "INPLACE_NORM_MIN_NUMEL", 1)  # exercise the in-place normalisation
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([ResBlock(8, 16, 4, 1e-6), SelfAttention(16, None, 4, 1e-6), ResBlock(16, 16, 4, 1e-6),
                                  Upsample(16)])
    x = torch.randn(1, 8, 4, 6, 4)
    ref = run_blocks(blocks, x)  # grad mode: plain path
    with torch.inference_mode():
        out = run_blocks(blocks, x.clone())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_resblock_forward_without_autograd_leaves_its_input_unchanged(monkeypatch):
    monkeypatch.setattr(layers, "INPLACE_NORM_MIN_NUMEL", 1)
    block = ResBlock(4, 8, 4, 1e-6)
    x = torch.randn(1, 4, 4, 4, 4)
    keep = x.clone()
    with torch.no_grad():
        block(x)
    assert torch.equal(x, keep)


def test_attention_math_path_for_training_equals_sdpa():
    torch.manual_seed(0)
    att = SelfAttention(16, 8, 4, 1e-6)
    x = torch.randn(2, 16, 3, 4, 5, requires_grad=True)
    train = att(x)  # CPU + autograd: explicit-matrix attention
    with torch.no_grad():
        infer = att(x)  # scaled_dot_product_attention
    torch.testing.assert_close(train.detach(), infer, rtol=1e-5, atol=1e-5)


def test_run_blocks_without_autograd_leaves_the_callers_tensor_unchanged(monkeypatch):
    monkeypatch.setattr(layers, "INPLACE_NORM_MIN_NUMEL", 1)
    blocks = [ResBlock(4, 8, 4, 1e-6), ResBlock(8, 16, 4, 1e-6)]
    x = torch.randn(1, 4, 4, 4, 4)
    keep = x.clone()
    with torch.inference_mode():
        run_blocks(blocks, x)
    assert torch.equal(x, keep)


def test_cached_upsample_kernels_follow_weight_updates():
    up = Upsample(3)
    x = torch.randn(1, 3, 2, 3, 2)
    with torch.no_grad():
        first = up(x)
        up.conv.weight.mul_(2)
        second = up(x)
        ref = up.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(second, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, second)
