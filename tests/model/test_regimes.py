"""Inference regimes of the Harmonizer, detail re-injection and calibration, on tiny networks."""

import numpy as np
import pytest
import torch

from hcld_bids.model import Harmonizer, compute_site_prototype, load_bundle, save_bundle
from hcld_bids.model.harmonize import REGIMES, Regime, brain_histogram, match_histogram
from hcld_bids.model.spectrum import band_power

GRID = (16, 32, 16)


def _volume(seed=5):
    rng = np.random.default_rng(seed)
    vol = rng.random(GRID, dtype=np.float32)
    vol[:2] = 0.0  # some background
    return vol


@pytest.fixture
def bundle_dir(tmp_path, tiny_models):
    ae, unet = tiny_models
    vols = [_volume(i) for i in range(2)]
    edges, density = brain_histogram(np.full(GRID, 0.8, np.float32) * np.linspace(0.2, 1, GRID[2]), np.ones(GRID))
    hist = {"edges": edges.tolist(), "density": density.tolist()}
    from scipy.ndimage import gaussian_filter

    spectrum = band_power(gaussian_filter(_volume(7), (0, 0, 1.5)), np.ones(GRID), 4).tolist()  # a z-blurred site
    save_bundle(tmp_path / "b", ae, unet, 1.3, {"A": compute_site_prototype(ae, vols, 1.3)},
                {"sites": {"A": {"intensity_histogram": hist, "power_spectrum": spectrum, "n_images": 2}},
                 "inference": {"kind": "sdedit", "strength": 0.3, "sampling_steps": 2, "calibrate": True}})
    return tmp_path / "b"


def test_bundle_inference_block_is_the_default_regime(bundle_dir):
    h = Harmonizer(load_bundle(bundle_dir))
    assert h.default_regime == Regime(kind="sdedit", strength=0.3, sampling_steps=2, calibrate=True)
    # keyword arguments override single fields; a kind name keeps the default's other settings
    assert h.resolve_regime(strength=0.5).strength == 0.5
    assert h.resolve_regime("full").kind == "full" and h.resolve_regime("full").calibrate


def test_bundle_without_inference_block_keeps_the_full_inversion(tmp_path, tiny_models):
    ae, unet = tiny_models
    save_bundle(tmp_path / "old", ae, unet, 1.0, {"A": compute_site_prototype(ae, [_volume()], 1.0)})
    h = Harmonizer(load_bundle(tmp_path / "old"))
    assert h.default_regime == Regime(kind="full", strength=1.0, inversion_steps=30, sampling_steps=10)


@pytest.mark.parametrize("kind", REGIMES)
def test_every_regime_runs_is_deterministic_and_masked(bundle_dir, kind):
    h = Harmonizer(load_bundle(bundle_dir))
    style = h.style_from_site("A")
    mask = _volume() > 0
    regime = Regime(kind=kind, strength=0.4, inversion_steps=3, sampling_steps=2)
    a = h.harmonize(_volume(), style, regime=regime, mask=mask, seed=3)
    b = h.harmonize(_volume(), style, regime=regime, mask=mask, seed=3)
    assert a.shape == GRID and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0 and not a[~mask].any()


def test_regimes_differ_from_each_other(bundle_dir):
    h = Harmonizer(load_bundle(bundle_dir))
    style = h.style_from_site("A")
    outs = {k: h.harmonize(_volume(), style, regime=Regime(kind=k, strength=0.5, inversion_steps=3,
                                                             sampling_steps=2)) for k in REGIMES}
    for k in REGIMES:
        for j in REGIMES:
            if k < j:
                assert not np.allclose(outs[k], outs[j]), (k, j)


def test_sdedit_noise_follows_the_seed(bundle_dir):
    h = Harmonizer(load_bundle(bundle_dir))
    style = h.style_from_site("A")
    regime = Regime(kind="sdedit", strength=0.8, sampling_steps=2)
    assert not np.allclose(h.harmonize(_volume(), style, regime=regime, seed=1),
                           h.harmonize(_volume(), style, regime=regime, seed=2))


def test_full_detail_reinjection_returns_the_input_when_the_latent_is_unchanged(bundle_dir):
    """With ``adain`` toward the image's own statistics the latent is unchanged, so ``D(z) + x - D(E(x)) = x``."""
    h = Harmonizer(load_bundle(bundle_dir))
    vol = _volume(7) * 0.8
    own = h.style_from_volume(vol)
    out = h.harmonize(vol, own, regime=Regime(kind="adain", detail=1.0))
    np.testing.assert_allclose(out, vol, atol=1e-4)


def test_calibration_maps_the_brain_onto_the_target_histogram(bundle_dir):
    h = Harmonizer(load_bundle(bundle_dir))
    style = h.style_from_site("A")
    mask = _volume() > 0
    out = h.harmonize(_volume(), style, regime=Regime(kind="adain", calibrate=True), mask=mask)
    edges, target = style.histogram
    _, got = brain_histogram(out, mask)
    cdf = lambda d: np.cumsum(d * np.diff(edges))  # noqa: E731
    assert np.abs(cdf(got) - cdf(target)).max() < 0.02


def test_calibration_without_a_histogram_is_a_clear_error(tmp_path, tiny_models):
    from hcld_bids.model import InputVolumeError

    ae, unet = tiny_models
    save_bundle(tmp_path / "nohist", ae, unet, 1.0, {"A": compute_site_prototype(ae, [_volume()], 1.0)})
    h = Harmonizer(load_bundle(tmp_path / "nohist"))
    with pytest.raises(InputVolumeError, match="histogram"):
        h.harmonize(_volume(), h.style_from_site("A"), regime=Regime(kind="adain", calibrate=True))


@pytest.mark.parametrize("added", [False, True])
def test_calibration_blends_by_the_heads_the_target_histogram_averages(bundle_dir, added):
    if added:  # site A of 2 images, added without training
        import json

        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        manifest["sites"]["A"]["added_without_training"] = True
        (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    h = Harmonizer(load_bundle(bundle_dir))
    mask = _volume() > 0
    ref = np.clip(_volume(11) ** 2, 0, 1)

    def run(style, **regime):
        return h.harmonize(_volume(), style, regime=Regime(kind="adain", detail=0.5, **regime), mask=mask)

    for style in (h.style_from_volume(ref), h.style_from_site("A")):
        raw, full = run(style), run(style, calibrate=True)
        half = run(style, calibrate=True, reference_calibration=0.5)
        none = run(style, calibrate=True, reference_calibration=0.0)
        assert not np.allclose(raw, full, atol=1e-3)
        if style.source.startswith("reference:"):
            np.testing.assert_allclose(half, 0.5 * raw + 0.5 * full, atol=1e-5)
            np.testing.assert_allclose(none, raw, atol=1e-6)
        elif added:  # the mean of 2 heads' histograms: weight 1 - (1 - reference_calibration) / 2
            np.testing.assert_allclose(half, 0.25 * raw + 0.75 * full, atol=1e-5)
            np.testing.assert_allclose(none, 0.5 * raw + 0.5 * full, atol=1e-5)
        else:  # a trained site: always full
            np.testing.assert_array_equal(half, full)
            np.testing.assert_array_equal(none, full)


@pytest.mark.parametrize("added", [False, True])
def test_reference_detail_sets_the_gain_toward_a_reference_or_an_added_site_not_a_trained_one(bundle_dir, added):
    if added:  # site A, added without training: known from few heads, like a reference
        import json

        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        manifest["sites"]["A"]["added_without_training"] = True
        (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    h = Harmonizer(load_bundle(bundle_dir))
    mask = _volume() > 0
    assert Regime(detail=0.75).detail_gain(True) == 0.75  # unset: the same gain for both targets
    assert Regime(detail=0.75, reference_detail=1.0).detail_gain(True) == 1.0
    assert Regime(detail=0.75, reference_detail=1.0).detail_gain(False) == 0.75

    def run(style, **regime):
        return h.harmonize(_volume(), style, regime=Regime(kind="adain", **regime), mask=mask)

    ref, site = h.style_from_volume(np.clip(_volume(11) ** 2, 0, 1)), h.style_from_site("A")
    np.testing.assert_array_equal(run(ref, detail=0.25, reference_detail=1.0), run(ref, detail=1.0))
    np.testing.assert_array_equal(run(site, detail=0.25, reference_detail=1.0),
                                  run(site, detail=1.0 if added else 0.25))
    assert not np.allclose(run(ref, detail=0.25), run(ref, detail=1.0), atol=1e-3)
    # gain 1: the input plus the change the model makes; with an identity fusion (the input as its own
    # reference) that change is zero, so the output is the input itself
    vol = _volume()
    same = h.harmonize(vol, h.style_from_volume(vol), regime=Regime(kind="adain", reference_detail=1.0), mask=mask)
    np.testing.assert_allclose(same[mask], np.clip(vol, 0, 1)[mask], atol=1e-5)


def test_spectral_calibration_filters_the_output_by_the_inputs_gain_before_the_histogram(bundle_dir):
    from hcld_bids.model.spectrum import match_spectrum

    h = Harmonizer(load_bundle(bundle_dir))
    mask = _volume() > 0
    for style in (h.style_from_site("A"), h.style_from_volume(np.clip(_volume(11) ** 2, 0, 1))):
        exponent = 0.75 if style.source.startswith("site:") else 0.5  # 2 site images / one reference
        plain = h.harmonize(_volume(), style, regime=Regime(kind="adain"), mask=mask)
        spec = h.harmonize(_volume(), style, regime=Regime(kind="adain", spectrum=1.0, reference_calibration=0.5),
                           mask=mask)
        # the gain that takes the input, mapped onto the target's histogram, to the target's spectrum
        measure = match_histogram(_volume(), mask, *style.histogram)
        expected = np.clip(match_spectrum(plain, mask, style.spectrum, exponent, measure=measure), 0, 1)
        expected[~mask] = 0
        np.testing.assert_allclose(spec, expected, atol=1e-5)
        assert not np.allclose(spec, plain, atol=1e-3), style.source
        # the histogram calibration still runs last: the brain's intensity distribution is the target's
        full = h.harmonize(_volume(), style, regime=Regime(kind="adain", calibrate=True, spectrum=1.0), mask=mask)
        edges, density = style.histogram
        cdf = lambda d: np.cumsum(d * np.diff(edges))  # noqa: E731
        assert np.abs(cdf(brain_histogram(full, mask)[1]) - cdf(density)).max() < 0.02
        assert not full[~mask].any() and 0 <= full.min() and full.max() <= 1


def test_spectral_exponent_shrinks_for_a_spectrum_of_few_images(bundle_dir):
    r = Regime(kind="adain", spectrum=2.0, reference_calibration=0.25)
    assert r.spectrum_exponent(1) == 0.5 and r.spectrum_exponent(3) == 1.5 and r.spectrum_exponent(300) == 1.995
    h = Harmonizer(load_bundle(bundle_dir))
    mask = _volume() > 0
    ref = h.style_from_volume(np.clip(_volume(11) ** 2, 0, 1))
    site = h.style_from_site("A")
    assert ref.images == 1 and site.images == 2  # the site's n_images in the manifest
    run = lambda style, **kw: h.harmonize(_volume(), style, regime=Regime(kind="adain", **kw), mask=mask)  # noqa: E731
    np.testing.assert_allclose(run(ref, spectrum=1.0, reference_calibration=0.5), run(ref, spectrum=0.5), atol=1e-6)
    np.testing.assert_allclose(run(site, spectrum=1.0, reference_calibration=0.5), run(site, spectrum=0.75), atol=1e-6)
    assert not np.allclose(run(ref, spectrum=1.0), run(ref, spectrum=0.5), atol=1e-4)


def test_spectral_calibration_without_a_site_spectrum_is_a_clear_error(tmp_path, tiny_models):
    from hcld_bids.model import InputVolumeError

    ae, unet = tiny_models
    save_bundle(tmp_path / "nospec", ae, unet, 1.0, {"A": compute_site_prototype(ae, [_volume()], 1.0)})
    h = Harmonizer(load_bundle(tmp_path / "nospec"))
    with pytest.raises(InputVolumeError, match="power spectrum"):
        h.harmonize(_volume(), h.style_from_site("A"), regime=Regime(kind="adain", spectrum=1.0))


def test_reference_style_carries_its_own_histogram(bundle_dir):
    h = Harmonizer(load_bundle(bundle_dir))
    ref = _volume(11) * 0.5
    edges, density = h.style_from_volume(ref).histogram
    assert density[edges[1:] > 0.51].sum() == 0 and density.sum() > 0


def test_match_histogram_keeps_order_and_outside():
    rng = np.random.default_rng(0)
    vol = rng.random((8, 8, 8)).astype(np.float32)
    mask = vol > 0.2
    edges = np.linspace(0, 1, 65)
    density = np.exp(-0.5 * ((edges[:-1] - 0.6) / 0.1) ** 2)
    out = match_histogram(vol, mask, edges, density)
    assert np.array_equal(out[~mask], vol[~mask])
    order = np.argsort(vol[mask])
    assert np.all(np.diff(out[mask][order]) >= 0)
    assert abs(np.median(out[mask]) - 0.6) < 0.03


@pytest.mark.parametrize("bad", [dict(kind="magic"), dict(strength=0.0), dict(strength=1.5),
                                 dict(sampling_steps=0), dict(detail=-1.0), dict(reference_calibration=-0.1),
                                 dict(reference_calibration=1.5), dict(guidance=-1.0), dict(guidance_source="x"),
                                 dict(spectrum=-1.0), dict(reference_detail=-0.5)])
def test_bad_regimes_are_refused(bad):
    with pytest.raises(ValueError):
        Regime(**bad)


def test_regime_round_trips_and_refuses_unknown_keys():
    r = Regime(kind="dual", strength=0.25, detail=0.5, calibrate=True)
    assert Regime.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="unknown inference settings"):
        Regime.from_dict({"kind": "sdedit", "noise": 3})


def test_unet_calls_per_regime():
    assert Regime(kind="adain").unet_calls() == 0
    assert Regime(kind="sdedit", sampling_steps=3).unet_calls() == 3
    assert Regime(kind="research").unet_calls() == 40
    assert Regime(kind="full", inversion_steps=5, sampling_steps=4).unet_calls() == 9
    # guidance asks the UNet twice per sampling step (target and source's own condition)
    assert Regime(kind="dual", inversion_steps=5, sampling_steps=4, guidance=1.0).unet_calls() == 13
    assert Regime(kind="sdedit", sampling_steps=3, guidance=2.0).unet_calls() == 6


def test_guidance_extrapolates_the_target_prediction_away_from_the_source_condition(bundle_dir):
    """Each guided sampling step uses ``eps_t + w (eps_t - eps_own)``, with the UNet asked under both conditions."""
    from hcld_bids.model.harmonize import guided

    target = lambda z, t: z * 2.0  # noqa: E731
    own = lambda z, t: z + 1.0  # noqa: E731
    z = torch.linspace(-1, 1, 8)
    torch.testing.assert_close(guided(target, own, 0.5)(z, 3), 2 * z + 0.5 * (2 * z - z - 1))

    h = Harmonizer(load_bundle(bundle_dir))
    style = h.style_from_site("A")
    conditions = []
    forward = h.unet.forward
    h.unet.forward = lambda zt, t, c=None: (conditions.append(c.clone()), forward(zt, t, c))[1]
    plain = Regime(kind="dual", strength=0.4, inversion_steps=3, sampling_steps=2)
    base = h.harmonize(_volume(), style, regime=plain)
    assert len(conditions) == 5
    conditions.clear()
    out = h.harmonize(_volume(), style, regime=Regime(**{**plain.to_dict(), "guidance": 2.0}))
    assert len(conditions) == 3 + 2 * 2
    # inversion under the own latent, then every sampling step under the target's and the own latent
    own_c, target_c = conditions[0], style.latent.expand_as(conditions[0])
    assert all(torch.equal(c, own_c) for c in conditions[:3])
    assert torch.equal(conditions[3], target_c) and torch.equal(conditions[4], own_c)
    assert not np.allclose(out, base)
    # with the source's nearest trained site as its style, guidance toward that same site changes nothing
    h.unet.forward = forward
    assert h.nearest_sites(h.encode(h._to_device([_volume()]))) == ["A"]
    same = h.harmonize(_volume(), style, regime=Regime(**{**plain.to_dict(), "guidance": 2.0, "guidance_source": "site"}))
    np.testing.assert_allclose(same, base, atol=1e-5)


def test_research_regime_queries_the_unet_only_at_small_timesteps(bundle_dir):
    h = Harmonizer(load_bundle(bundle_dir))
    seen = []
    forward = h.unet.forward

    def spy(sample, timesteps, condition=None):
        seen.append(int(torch.as_tensor(timesteps).reshape(-1)[0]))
        return forward(sample, timesteps, condition)

    h.unet.forward = spy
    h.harmonize(_volume(), h.style_from_site("A"), regime=Regime(kind="research"))
    assert seen == list(range(30)) + list(range(45, -1, -5))


def test_calibration_weight_says_which_calibration_runs():
    assert Regime(kind="adain").calibration_weight(1) == 0.0
    r = Regime(kind="adain", calibrate=True, reference_calibration=0.25)
    assert r.calibration_weight(1) == 0.25  # one head: a reference image
    assert r.calibration_weight(3) == pytest.approx(0.75)  # the head share 0.75 shrinks with the heads averaged
    assert r.calibration_weight(0) == 0.25  # a site that does not say its images counts as one
    default = Regime(kind="dual", calibrate=True, reference_calibration=0.5)
    assert [default.calibration_weight(n) for n in (1, 2, 4, 34)] == pytest.approx([0.5, 0.75, 0.875, 1 - 0.5 / 34])
    assert default.calibration_weight(None) == 1.0  # a trained site
    assert Regime(kind="adain", calibrate=True).calibration_weight(1) == 1.0  # bundles before the setting


def test_calibration_images_tell_trained_sites_from_added_ones():
    from hcld_bids.model.harmonize import added_site_images

    manifest = {"sites": {"A": {"n_images": 34}, "V": {"n_images": 2, "added_without_training": True},
                          "W": {"prototype": {"n_images": 3}, "added_without_training": True}}}
    assert added_site_images(manifest, "A") is None  # trained: calibrated fully
    assert (added_site_images(manifest, "V"), added_site_images(manifest, "W")) == (2, 3)
    assert added_site_images({}, "X") is None


def test_spectrum_exponent_is_spectrum_less_the_head_share_per_image():
    from hcld_bids.model.harmonize import Regime

    regime = Regime(kind="dual", spectrum=1.5, reference_calibration=0.3)
    assert regime.head_share == pytest.approx(0.7)
    assert regime.spectrum_exponent(1) == pytest.approx(1.5 * 0.3)
    assert regime.spectrum_exponent(10) == pytest.approx(1.5 * (1 - 0.07))
