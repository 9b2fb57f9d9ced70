import torch

from hcld_bids.model import adain, channel_stats, instance_norm


def test_adain_output_has_exactly_the_target_channel_statistics():
    torch.manual_seed(0)
    content = torch.randn(2, 6, 5, 6, 5) * 3 + 1
    style = torch.randn(2, 6, 5, 6, 5) * torch.arange(1, 7).view(1, 6, 1, 1, 1) - 2
    out = adain(content, style)
    m_out, s_out = channel_stats(out)
    m_sty, s_sty = channel_stats(style)
    torch.testing.assert_close(m_out, m_sty, rtol=0, atol=1e-5)
    torch.testing.assert_close(s_out, s_sty, rtol=1e-5, atol=0)


def test_adain_keeps_the_content_layout():
    torch.manual_seed(0)
    content, style = torch.randn(1, 6, 4, 4, 4), torch.randn(1, 6, 4, 4, 4) * 2
    torch.testing.assert_close(instance_norm(adain(content, style)), instance_norm(content), rtol=1e-4, atol=1e-4)


def test_adain_accepts_stored_statistics():
    torch.manual_seed(0)
    content = torch.randn(3, 6, 4, 4, 4)
    mean, std = torch.linspace(-1, 1, 6), torch.linspace(0.5, 2, 6)
    m, s = channel_stats(adain(content, (mean, std)))
    torch.testing.assert_close(m.flatten(1), mean.expand(3, 6), rtol=0, atol=1e-5)
    torch.testing.assert_close(s.flatten(1), std.expand(3, 6), rtol=1e-5, atol=0)


def test_instance_norm_gives_zero_mean_unit_std_per_channel():
    m, s = channel_stats(instance_norm(torch.randn(2, 3, 4, 5, 6) * 7 + 3))
    torch.testing.assert_close(m, torch.zeros_like(m), rtol=0, atol=1e-5)
    torch.testing.assert_close(s, torch.ones_like(s), rtol=1e-5, atol=0)
