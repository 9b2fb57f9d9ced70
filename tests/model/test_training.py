"""Training engine on real (3 mm, cropped) scans with tiny networks."""

import csv
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hcld_bids.model import AutoencoderKL, CheckpointError
from hcld_bids.model.prototypes import compute_scale_factor
from hcld_bids.model.training import AutoencoderTrainConfig, LDMTrainConfig, train_autoencoder, train_ldm

SITES = ["siemens", "siemens", "uih", "uih"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _recon_l1(ae, volumes):
    ae.eval()
    with torch.no_grad():
        return float(np.mean([(ae(torch.from_numpy(v)[None, None])[0][0, 0] - torch.from_numpy(v)).abs().mean()
                              for v in volumes]))


@pytest.fixture(scope="module")
def trained_ae(real_volumes, tmp_path_factory, tiny_ae_config):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    before = _recon_l1(AutoencoderKL(**tiny_ae_config), real_volumes)  # same seed, same initial weights as the run
    # 4 volumes, batch 2: 2 steps per epoch; the adversarial terms start at epoch 10 (step 20)
    cfg = AutoencoderTrainConfig(autoencoder=tiny_ae_config, steps=30, batch_size=2, lr=1e-3, adv_warmup_epochs=10,
                                 progress=False, checkpoint_every=1000)
    result = train_autoencoder(real_volumes, cfg, tmp_path_factory.mktemp("ae"), device="cpu")
    torch.set_num_threads(threads)
    return result, before


@pytest.mark.slow
def test_tiny_autoencoder_overfits_real_volumes(trained_ae, real_volumes):
    result, before = trained_ae
    after = _recon_l1(result.autoencoder, real_volumes)
    assert after <= 0.5 * before, (before, after)
    rows = _rows(result.history)
    assert len(rows) == 30 and result.complete
    assert all(float(r["g_adv"]) == 0 for r in rows[:20]) and all(float(r["g_adv"]) > 0 for r in rows[20:])
    assert all(float(r["d_loss"]) > 0 for r in rows[20:])
    assert math.isfinite(result.scale_factor) and result.scale_factor > 0


@pytest.mark.slow
def test_tiny_ldm_noise_loss_falls(trained_ae, real_volumes, tmp_path, tiny_unet_config):
    result, _ = trained_ae
    cfg = LDMTrainConfig(unet=tiny_unet_config, disc_channels=(8, 16, 16), steps=60, batch_size=2, grad_accum=1,
                         lr=1e-3, content_weight=0, style_weight=0, adv_weight=0, grad_weight=0, progress=False,
                         checkpoint_every=1000)
    out = train_ldm(real_volumes, SITES, cfg, tmp_path, autoencoder=result.autoencoder,
                    scale_factor=result.scale_factor, device="cpu")
    noise = [float(r["noise"]) for r in _rows(out.history)]
    assert np.mean(noise[-10:]) < 0.85 * np.mean(noise[:5]), noise
    assert sorted(out.prototypes) == ["siemens", "uih"] and out.prototypes["uih"].count == 2


@pytest.mark.slow
def test_ldm_runs_every_hcld_loss_with_the_adversarial_burn_in(trained_ae, real_volumes, tmp_path, tiny_unet_config):
    result, _ = trained_ae
    # 4 items, batch 1 x accumulation 2: 2 steps per epoch; the adversarial term starts at epoch 2 (step 4)
    cfg = LDMTrainConfig(unet=tiny_unet_config, disc_channels=(8, 16, 16), steps=8, batch_size=1, grad_accum=2,
                         adv_burn_in_epochs=2, grad_crop=4, prototype_condition_prob=0.5, progress=False,
                         checkpoint_every=1000)
    out = train_ldm(real_volumes, SITES, cfg, tmp_path, autoencoder=result.autoencoder,
                    scale_factor=result.scale_factor, device="cpu")
    rows = _rows(out.history)
    for r in rows:
        for k in ("noise", "content", "style", "grad", "d_loss"):
            assert math.isfinite(float(r[k])) and float(r[k]) > 0, (k, r)
    assert all(float(r["g_adv"]) == 0 for r in rows[:4]) and all(float(r["g_adv"]) > 0 for r in rows[4:])


def _ldm_cfg(unet_cfg, steps):
    return LDMTrainConfig(unet=unet_cfg, disc_channels=(8, 16, 16), steps=steps, batch_size=1, grad_accum=2,
                          adv_burn_in_epochs=1, grad_crop=4, prototype_condition_prob=0.5, progress=False,
                          checkpoint_every=1000)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow
def test_ldm_resume_reproduces_the_uninterrupted_run(real_volumes, tmp_path, tiny_unet_config, tiny_ae_config):
    torch.manual_seed(1)
    ae = AutoencoderKL(**tiny_ae_config).eval()
    sf = compute_scale_factor(ae, real_volumes)
    kw = dict(autoencoder=ae, scale_factor=sf, device="cpu")
    full = train_ldm(real_volumes, SITES, _ldm_cfg(tiny_unet_config, 6), tmp_path / "full", **kw)
    part = train_ldm(real_volumes, SITES, _ldm_cfg(tiny_unet_config, 6), tmp_path / "split", stop_after_steps=3, **kw)
    assert not part.complete and len(_rows(part.history)) == 3
    resumed = train_ldm(real_volumes, SITES, _ldm_cfg(tiny_unet_config, 6), tmp_path / "split", **kw)
    assert resumed.complete
    assert _strip(_rows(resumed.history)) == _strip(_rows(full.history))
    for k, v in full.unet.state_dict().items():
        assert torch.equal(v, resumed.unet.state_dict()[k]), k


@pytest.mark.slow
def test_autoencoder_resume_reproduces_the_uninterrupted_run(real_volumes, tmp_path, tiny_ae_config):
    cfg = AutoencoderTrainConfig(autoencoder=tiny_ae_config, steps=4, batch_size=1, patch_size=(32, 32, 32),
                                 disc_channels=8, adv_warmup_epochs=0.25, progress=False, checkpoint_every=1)
    full = train_autoencoder(real_volumes, cfg, tmp_path / "full", device="cpu")
    train_autoencoder(real_volumes, cfg, tmp_path / "split", device="cpu", stop_after_steps=2)
    resumed = train_autoencoder(real_volumes, cfg, tmp_path / "split", device="cpu")
    assert _strip(_rows(resumed.history)) == _strip(_rows(full.history))
    assert resumed.scale_factor == full.scale_factor


def test_linear_skip_autoencoder_starts_from_the_linear_solution_and_resumes(real_volumes, tmp_path):
    """A fresh run initialises the linear path from the training images; a resumed run keeps its own weights."""
    arch = dict(channels=[8], latent_channels=3, num_res_blocks=1, attention_levels=[False], norm_groups=4,
                patch_size=2, mid_attention=False, linear_skip=True)
    vols = [v[:32, :32, :32].copy() for v in real_volumes]
    cfg = AutoencoderTrainConfig(autoencoder=arch, steps=2, batch_size=1, lr=1e-4, patch_size=(16, 16, 16),
                                 progress=False, checkpoint_every=1, augment_prob=0.0)
    linear = AutoencoderKL(**arch)
    linear.init_linear_skip(vols)
    plain = AutoencoderKL(**{**arch, "linear_skip": False})
    assert _recon_l1(linear, vols) < 0.3 * _recon_l1(plain, vols)
    result = train_autoencoder(vols, cfg, tmp_path / "run", device="cpu", stop_after_steps=1)
    # one small step away from the linear solution: still about as good, not a random network
    assert _recon_l1(result.autoencoder, vols) < 1.5 * _recon_l1(linear, vols)
    trained = {k: v.clone() for k, v in result.autoencoder.state_dict().items()}
    other = [np.flip(v, axis=0).copy() * 0.5 for v in vols]  # a resume must not re-fit the basis to new images
    resumed = train_autoencoder(other, cfg, tmp_path / "run", device="cpu", stop_after_steps=0)
    for k, v in resumed.autoencoder.state_dict().items():
        torch.testing.assert_close(v, trained[k])


def test_a_raised_step_target_reshapes_the_learning_rate_schedule_on_resume(real_volumes, tmp_path, tiny_ae_config):
    """Raising ``steps`` on a resume (allowed) must stretch the cosine to the new target, not keep the old one
    that the checkpointed scheduler carries (which left a run at its minimum rate after the old target)."""
    vols = [v[:32, :32, :32].copy() for v in real_volumes]
    base = dict(autoencoder=tiny_ae_config, batch_size=1, lr=1e-3, patch_size=(16, 16, 16), progress=False,
                checkpoint_every=1, augment_prob=0.0, warmup_steps=1, lr_min_ratio=0.05)
    train_autoencoder(vols, AutoencoderTrainConfig(steps=3, **base), tmp_path / "raised", device="cpu")
    resumed = train_autoencoder(vols, AutoencoderTrainConfig(steps=8, **base), tmp_path / "raised", device="cpu")
    fresh = train_autoencoder(vols, AutoencoderTrainConfig(steps=8, **base), tmp_path / "fresh", device="cpu")
    lr_resumed = [float(r["lr"]) for r in _rows(resumed.history)]
    lr_fresh = [float(r["lr"]) for r in _rows(fresh.history)]
    assert len(lr_resumed) == len(lr_fresh) == 8
    assert lr_resumed[3:] == pytest.approx(lr_fresh[3:], rel=1e-6)  # the 8-step cosine from step 3 on
    assert lr_resumed[3] > 0.5 * 1e-3  # not the old schedule's floor (5e-5)


def test_changed_configuration_refuses_to_resume(real_volumes, tmp_path, tiny_unet_config):
    z = torch.randn(4, 6, 8, 12, 8)
    cfg = LDMTrainConfig(unet=tiny_unet_config, disc_channels=(8, 16, 16), steps=2, grad_weight=0, grad_accum=1,
                         progress=False)
    train_ldm(z, SITES, cfg, tmp_path, device="cpu", stop_after_steps=1)
    cfg.lr = 5e-4
    with pytest.raises(CheckpointError, match="lr"):
        train_ldm(z, SITES, cfg, tmp_path, device="cpu")


def test_stage2_trains_on_cached_latents_without_images(tmp_path, tiny_unet_config):
    z = torch.randn(4, 6, 8, 12, 8)
    cfg = LDMTrainConfig(unet=tiny_unet_config, disc_channels=(8, 16, 16), steps=2, grad_weight=0, grad_accum=1,
                         progress=False)
    out = train_ldm(z, SITES, cfg, tmp_path, device="cpu")
    assert out.complete and (tmp_path / "checkpoint.safetensors").is_file() and len(_rows(out.history)) == 2


def test_gradient_loss_without_images_is_refused(tmp_path, tiny_unet_config):
    with pytest.raises(ValueError, match="image-gradient"):
        train_ldm(torch.randn(4, 6, 8, 12, 8), SITES, LDMTrainConfig(unet=tiny_unet_config, steps=1), tmp_path)


@pytest.mark.slow
def test_ldm_runs_under_torchrun_with_two_processes(tmp_path, tiny_unet_config):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from hcld_bids.model.training import LDMTrainConfig, train_ldm
        torch.set_num_threads(1)
        z = torch.randn(4, 6, 8, 12, 8, generator=torch.Generator().manual_seed(0))
        cfg = LDMTrainConfig(unet={tiny_unet_config!r}, disc_channels=(8, 16, 16), steps=2, grad_weight=0,
                             grad_accum=2, progress=False)
        out = train_ldm(z, ["a", "a", "b", "b"], cfg, {str(tmp_path / "work")!r}, device="cpu")
        import os, torch.distributed as dist
        # one write() of the whole line: the two ranks share the pipe, and print() may split a line
        os.write(1, f"rank {{dist.get_rank()}} of {{dist.get_world_size()}} complete {{out.complete}}\\n".encode())
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29517", str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2 complete True" in proc.stdout and "rank 1 of 2 complete True" in proc.stdout
    assert len(_rows(tmp_path / "work" / "history.csv")) == 2


def test_one_target_training_conditions_every_item_on_that_site(tmp_path, tiny_unet_config):
    from hcld_bids.model.training.stage2 import _Stage2
    from hcld_bids.model.training.distributed import setup

    z = torch.randn(4, 6, 8, 12, 8)
    cfg = LDMTrainConfig(unet=tiny_unet_config, disc_channels=(8, 16, 16), steps=1, grad_weight=0, grad_accum=1,
                         progress=False, target_site="uih")
    stage = _Stage2(z, SITES, cfg, tmp_path, setup("cpu"), None, None, None, None, None)
    gen = torch.Generator().manual_seed(0)
    uih = {2, 3}
    for _ in range(5):
        cond = stage._pairs([0, 1, 2, 3], gen)[0]
        for row in cond:  # every condition is one of the uih latents (no prototype conditioning here)
            assert any(torch.equal(row.cpu(), z[j]) for j in uih)


def test_one_target_training_refuses_a_site_without_images(tmp_path, tiny_unet_config):
    from hcld_bids.model.errors import UnknownSiteError

    cfg = LDMTrainConfig(unet=tiny_unet_config, steps=1, grad_weight=0, grad_accum=1, progress=False,
                         target_site="philips")
    with pytest.raises(UnknownSiteError, match="philips"):
        train_ldm(torch.randn(4, 6, 8, 12, 8), SITES, cfg, tmp_path, device="cpu")


def test_an_unreadable_latent_cache_is_encoded_again(tmp_path, tiny_ae_config, real_volumes, caplog):
    from hcld_bids.model.training.stage2 import LATENT_CACHE, cached_latents

    ae = AutoencoderKL(**tiny_ae_config).eval()
    vols = real_volumes[:2]
    first = cached_latents(ae, vols, 1.0, tmp_path, "cpu")
    cache = tmp_path / LATENT_CACHE
    cache.write_bytes(cache.read_bytes()[:40])  # a run killed while another process wrote it by hand
    with caplog.at_level("WARNING", logger="hcld_bids.model"):
        again = cached_latents(ae, vols, 1.0, tmp_path, "cpu")
    assert torch.equal(first, again)
    assert "unreadable" in caplog.text and str(cache) in caplog.text
    assert cached_latents(ae, vols, 1.0, tmp_path, "cpu").shape == first.shape  # the rewritten cache reads
