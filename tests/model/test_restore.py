"""The restoration prior: network, training pairs, trainer, bundle storage and its place in the harmonizer."""

import numpy as np
import pytest
import torch

from hcld_bids.model import add_prototypes, compute_site_prototype, load_bundle, save_bundle
from hcld_bids.model.bundle import RESTORE_FILE, add_restoration
from hcld_bids.model.errors import BundleError, BundleIntegrityError
from hcld_bids.model.evaluation import masked_ssim
from hcld_bids.model.harmonize import Harmonizer, InputVolumeError, Regime
from hcld_bids.model.restore import (
    RestorationNet,
    RestorationTrainer,
    degradation_pair,
    estimate_noise,
    restore_volume,
)
from hcld_bids.simulate import SITES

GRID = (16, 32, 16)


def _brain(seed=0, shape=GRID):
    """A smooth blob-textured 'brain' in [0, 1], zero outside an ellipsoid."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    tex = gaussian_filter(rng.random(shape), 1.5)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid ** 2).sum(0) < 0.8
    return np.where(inside, 0.2 + 0.8 * tex, 0.0).astype(np.float32), inside


def test_untrained_network_is_the_identity_and_needs_even_grids():
    net = RestorationNet(channels=4, blocks=1)
    x = torch.rand(2, 1, 8, 12, 6)
    assert torch.equal(net(x), x)
    with pytest.raises(ValueError, match="even"):
        net(torch.rand(1, 1, 7, 8, 8))
    with pytest.raises(ValueError):
        RestorationNet(channels=0)
    assert RestorationNet.from_config(net.config).config == {"channels": 4, "blocks": 1}


def test_restore_volume_pads_odd_grids_clips_and_keeps_the_outside_zero():
    vol, brain = _brain(shape=(15, 17, 16))
    net = RestorationNet(channels=4, blocks=1)
    torch.nn.init.normal_(net.tail.weight, std=0.5)
    out = restore_volume(net, vol, brain)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert np.all(out[~brain] == 0) and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out[brain], vol[brain])


def test_degradation_pair_degrades_one_and_keeps_the_other_clean():
    vol, brain = _brain(3)
    degraded, clean = degradation_pair(vol, np.random.default_rng(0), site_effects=[SITES["siteB"]],
                                       random_prob=0.0)
    assert degraded.shape == clean.shape == vol.shape
    assert np.all(degraded[~brain] == 0) and np.all(clean[~brain] == 0)
    # siteB: noise and blur in one, neither in the other (same contrast curve)
    rough = (lambda v: np.abs(np.diff(v, axis=0))[brain[1:] & brain[:-1]].mean())
    assert masked_ssim(clean, vol, brain) > 0.9 > masked_ssim(degraded, vol, brain)
    assert rough(degraded) != pytest.approx(rough(clean), rel=0.05)


def test_a_few_training_steps_learn_to_undo_the_degradation():
    torch.manual_seed(0)
    vols = [_brain(i) for i in range(3)]
    net = RestorationNet(channels=8, blocks=1)
    trainer = RestorationTrainer(net, [v for v, _ in vols], [m for _, m in vols], steps=120, batch=2, patch=16,
                                 lr=3e-3, site_effects=[SITES["siteB"]], random_prob=0.0)
    pairs = [degradation_pair(v, np.random.default_rng(9), site_effects=[SITES["siteB"]], random_prob=0.0)
             + (m,) for v, m in vols]
    before = np.mean([masked_ssim(d, c, m) for d, c, m in pairs])
    first = trainer.train_step()
    trainer.run()
    assert trainer.step == 120
    after = np.mean([masked_ssim(restore_volume(net, d, m), c, m) for d, c, m in pairs])
    assert after > before + 0.02, (before, after, first)
    assert trainer.learning_rate(120) == pytest.approx(0.0) and trainer.learning_rate(0) == pytest.approx(3e-3)


def test_ssim_term_of_the_loss_is_the_masked_ssim_and_pulls_toward_it():
    from hcld_bids.model.evaluation import ssim_map

    vol, brain = _brain(4)
    degraded, clean = degradation_pair(vol, np.random.default_rng(1), site_effects=[SITES["siteB"]], random_prob=0.0)
    a, b, m = (torch.from_numpy(np.asarray(v, dtype=np.float64))[None, None] for v in (degraded, clean, brain))
    s = float((ssim_map(a * m, b * m) * m).sum() / m.sum())
    assert s == pytest.approx(masked_ssim(degraded, clean, brain), abs=1e-9)
    torch.manual_seed(0)
    losses = {}
    for w in (0.0, 1.0):
        net = RestorationNet(channels=4, blocks=1)
        torch.nn.init.normal_(net.tail.weight, std=0.01)
        trainer = RestorationTrainer(net, [vol], [brain], steps=10, batch=1, patch=16, ssim_weight=w,
                                     site_effects=[SITES["siteB"]], random_prob=0.0, seed=3)
        losses[w] = trainer.train_step()
    # same draw, same crop: L1 is small (~0.05), 1 - SSIM of a noisy crop is not
    assert 0 < losses[0.0] < losses[1.0] < 1


def test_trainer_refuses_bad_settings():
    vol, brain = _brain()
    with pytest.raises(ValueError):
        RestorationTrainer(RestorationNet(4, 1), [vol], [], steps=1)
    with pytest.raises(ValueError):
        RestorationTrainer(RestorationNet(4, 1), [vol], [brain], steps=1, patch=5)
    with pytest.raises(ValueError, match="ssim_weight"):
        RestorationTrainer(RestorationNet(4, 1), [vol], [brain], steps=1, ssim_weight=1.5)


@pytest.fixture
def bundle_dir(tmp_path, tiny_models):
    ae, unet = tiny_models
    vols = [_brain(i)[0] for i in range(2)]
    save_bundle(tmp_path / "b", ae, unet, 1.3, {"A": compute_site_prototype(ae, vols, 1.3)},
                {"sites": {"A": {"n_images": 2}}, "inference": {"kind": "adain"}})
    return tmp_path / "b"


def _trained_looking_net(seed=0):
    torch.manual_seed(seed)
    net = RestorationNet(channels=4, blocks=1)
    torch.nn.init.normal_(net.tail.weight, std=0.05)
    return net


def test_bundle_stores_the_restoration_prior_and_keeps_it_when_sites_are_added(bundle_dir):
    assert load_bundle(bundle_dir).restoration is None
    net = _trained_looking_net()
    b = add_restoration(bundle_dir, net, {"steps": 5})
    assert (bundle_dir / RESTORE_FILE).is_file() and b.manifest["restoration"]["training"] == {"steps": 5}
    for k, v in net.state_dict().items():
        assert torch.equal(b.restoration.state_dict()[k], v)
    after = add_prototypes(bundle_dir, {"B": [_brain(5)[0]]})
    assert after.restoration is not None and after.weights_sha256[RESTORE_FILE] == b.weights_sha256[RESTORE_FILE]
    (bundle_dir / RESTORE_FILE).write_bytes(b"x" * 10)
    with pytest.raises(BundleIntegrityError):
        load_bundle(bundle_dir)


def test_a_restoration_block_without_weights_is_a_bundle_error(bundle_dir):
    import json

    add_restoration(bundle_dir, _trained_looking_net())
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["restoration"]["weights"] = "../elsewhere.safetensors"
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="restoration"):
        load_bundle(bundle_dir)


def test_harmonizer_restores_its_input_first_and_only_when_asked(bundle_dir):
    vol, brain = _brain(4)
    plain = Harmonizer(load_bundle(bundle_dir))
    style = plain.style_from_site("A")
    with pytest.raises(InputVolumeError, match="restoration prior"):
        plain.harmonize(vol, style, regime=Regime(kind="adain", restore=1.0), mask=brain)
    net = _trained_looking_net()
    h = Harmonizer(add_restoration(bundle_dir, net))
    off = h.harmonize(vol, style, regime=Regime(kind="adain"), mask=brain)
    np.testing.assert_array_equal(off, plain.harmonize(vol, style, regime=Regime(kind="adain"), mask=brain))
    on = h.harmonize(vol, style, regime=Regime(kind="adain", restore=1.0), mask=brain)
    restored = restore_volume(net, vol, brain)
    np.testing.assert_allclose(on, h.harmonize(restored, style, regime=Regime(kind="adain"), mask=brain), atol=1e-5)
    half = h.restore([vol], [brain], 0.5)[0]
    np.testing.assert_allclose(half[brain], 0.5 * (vol + restored)[brain], atol=1e-6)
    assert h.last_timings["restore"] >= 0
    with pytest.raises(ValueError):
        Regime(restore=1.5)


def test_noise_estimate_follows_the_noise_added_and_ignores_the_outside():
    shape = (32, 40, 32)
    rng = np.random.default_rng(0)
    slab = np.zeros(shape, bool)
    slab[4:-4, 4:-4, 4:-4] = True
    ramp = np.linspace(0.3, 0.8, shape[0])[:, None, None]  # smooth: its own wavelet detail is ~0
    for sigma in (0.01, 0.04):  # few edge voxels: the estimate is the noise's standard deviation
        noisy = np.where(slab, ramp + rng.normal(0, sigma, shape), 0.0)
        assert estimate_noise(noisy, slab) == pytest.approx(sigma, rel=0.1)
    _, brain = _brain(7, shape=shape)
    estimates = []
    for sigma in (0.01, 0.02, 0.04):  # a brain's edge adds to it, and it still grows with the noise
        noisy = np.where(brain, ramp + rng.normal(0, sigma, shape), 0.0)
        estimates.append(estimate_noise(noisy, brain))
    assert estimates[0] < estimates[1] < estimates[2]
    # voxels outside the mask do not count: the same brain with noise outside it gives the same estimate
    outside = np.where(brain, noisy, rng.random(shape))
    assert estimate_noise(outside, brain) == pytest.approx(estimates[-1])
    assert estimate_noise(noisy, np.zeros_like(brain)) == 0.0
    with pytest.raises(ValueError, match="mask"):
        estimate_noise(noisy, brain[:-1])


def test_restoration_weight_follows_each_images_noise(bundle_dir):
    regime = Regime(kind="adain", restore=0.25, restore_noisy=1.0, noise_threshold=0.02)
    assert regime.adaptive_restoration and regime.restores
    assert [regime.restore_weight(n) for n in (None, 0.01, 0.02, 0.03)] == [0.25, 0.25, 0.25, 1.0]
    assert not Regime(restore=0.5, restore_noisy=0.5).adaptive_restoration
    assert Regime(restore=0.0, restore_noisy=1.0).restores and not Regime().restores
    for bad in ({"restore_noisy": 1.5}, {"restore_noisy": -0.1}, {"noise_threshold": -1.0}):
        with pytest.raises(ValueError):
            Regime(**bad)
    assert Regime.from_dict(regime.to_dict()) == regime

    vol, brain = _brain(8)
    noisy = np.where(brain, np.clip(vol + np.random.default_rng(1).normal(0, 0.05, vol.shape), 0, 1), 0.0)
    noisy = noisy.astype(np.float32)
    plain = Harmonizer(load_bundle(bundle_dir))
    with pytest.raises(InputVolumeError, match="restore_noisy"):
        plain.harmonize(vol, plain.style_from_site("A"), regime=Regime(kind="adain", restore_noisy=1.0), mask=brain)
    h = Harmonizer(add_restoration(bundle_dir, _trained_looking_net()))
    style = h.style_from_site("A")
    clean_noise, noisy_noise = estimate_noise(vol, brain), estimate_noise(noisy, brain)
    assert clean_noise < noisy_noise
    regime = Regime(kind="adain", restore=0.25, restore_noisy=1.0, noise_threshold=(clean_noise + noisy_noise) / 2)
    outs = h.harmonize_batch([vol, noisy], style, regime=regime, masks=[brain, brain])
    assert [r["noise"] for r in h.last_restoration] == [clean_noise, noisy_noise]
    assert [r["weight"] for r in h.last_restoration] == [0.25, 1.0]
    # each image is what the fixed weight it was given makes of it
    np.testing.assert_allclose(outs[0], h.harmonize(vol, style, regime=Regime(kind="adain", restore=0.25), mask=brain),
                               atol=1e-5)
    np.testing.assert_allclose(outs[1], h.harmonize(noisy, style, regime=Regime(kind="adain", restore=1.0), mask=brain),
                               atol=1e-5)
    # a fixed weight estimates nothing
    assert h.last_restoration == [{"weight": 1.0, "noise": None}]


def test_clean_pairs_are_the_same_image_twice():
    vol, brain = _brain(6)
    degraded, clean = degradation_pair(vol, np.random.default_rng(1), site_effects=[SITES["siteB"]], random_prob=0.0,
                                       clean_prob=1.0)
    np.testing.assert_array_equal(degraded, clean)
    degraded, clean = degradation_pair(vol, np.random.default_rng(1), site_effects=[SITES["siteB"]], random_prob=0.0,
                                       realistic=True)
    assert not np.allclose(degraded, clean) and np.all(degraded[~brain] == 0)
