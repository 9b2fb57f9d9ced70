"""Tests of the site simulator (hcld_bids.simulate) on a synthetic head phantom and one real 3 mm scan."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from hcld_bids.simulate import (
    CURVE_KNOTS,
    SITES,
    SiteEffect,
    bias_field,
    contrast_curve,
    derive_seed,
    head_mask,
    random_site,
    reference_intensity,
    simulate,
    voxel_axes,
)

DATA = Path(__file__).resolve().parents[1] / "hcld_bids" / "data" / "t1w"

# PSR orientation like the IXI images: voxel axis 0 -> world y, 1 -> z, 2 -> x; 3 mm voxels.
PSR = np.array([[0, 0, 3.0, -70], [-3.0, 0, 0, 80], [0, 3.0, 0, -70], [0, 0, 0, 1]])
WM, GM, CSF, FAT = 1000.0, 650.0, 250.0, 1300.0


def _radius(shape=(48, 56, 48)):
    grid = np.meshgrid(*[np.linspace(-1.25, 1.25, n) for n in shape], indexing="ij")
    return np.sqrt(sum(g**2 for g in grid))


def _phantom(shape=(48, 56, 48)):
    """Ellipsoidal head: WM core, GM, CSF, dark skull, bright scalp fat; zero background."""
    r = _radius(shape)
    img = np.zeros(shape, np.float32)
    for r_out, value in ((1.0, FAT), (0.92, 100.0), (0.85, CSF), (0.8, GM), (0.6, WM)):
        img[r <= r_out] = value
    return img


def _striped_box(shape=(48, 56, 48)):
    """Box head whose interior is 1000 + a sum of one random stripe profile per voxel axis.

    Every edge is aligned with a voxel axis, so blurring along one axis leaves the gradients along the
    other axes unchanged (except at the few box faces).
    """
    rng = np.random.default_rng(0)
    img = np.zeros(shape, np.float32)
    inner = tuple(slice(6, n - 6) for n in shape)
    profiles = [rng.choice([-1.0, 1.0], size=n) for n in shape]
    texture = sum(np.expand_dims(p, [a for a in range(3) if a != ax]) for ax, p in enumerate(profiles))
    img[inner] = (WM + 100.0 * texture)[inner]
    return img


def _identity(name="plain", **kwargs):
    return SiteEffect(name=name, **kwargs)


def _gradient_energy(vol, axis):
    return float(np.sum(np.diff(vol.astype(np.float64), axis=axis) ** 2))


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


@pytest.fixture(scope="module")
def real_scan():
    img = nib.load(str(DATA / "uih_umr770_3T_run1_2mm.nii.gz"))
    return img.get_fdata(dtype=np.float32), img.affine


# ---------------------------------------------------------------- determinism and basic contract


@pytest.mark.parametrize("site", list(SITES))
def test_same_seed_gives_identical_array(phantom, site):
    a = simulate(phantom, PSR, SITES[site], seed=7)
    b = simulate(phantom, PSR, SITES[site], seed=7)
    assert a.dtype == np.float32 and a.shape == phantom.shape
    assert np.array_equal(a, b)


def test_different_seed_gives_different_noise(phantom):
    a = simulate(phantom, PSR, SITES["siteB"], seed=1)
    b = simulate(phantom, PSR, SITES["siteB"], seed=2)
    core = _radius() < 0.4
    # Two independent noise draws: the difference has std ≈ sqrt(2) * sigma (a few % of WM here).
    assert np.std((a - b)[core]) > 0.02 * WM * SITES["siteB"].scale


def test_output_is_non_negative_for_every_site(phantom):
    for site in SITES.values():
        assert simulate(phantom, PSR, site, seed=3).min() >= 0


def test_simulate_rejects_non_3d_and_non_finite_input(phantom):
    with pytest.raises(ValueError, match="3D"):
        simulate(phantom[0], PSR, SITES["siteA"], seed=0)
    bad = phantom.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        simulate(bad, PSR, SITES["siteA"], seed=0)


def test_derive_seed_is_stable_and_depends_on_every_key():
    s = derive_seed(0, "IXI012-HH-1211", "siteA")
    assert s == derive_seed(0, "IXI012-HH-1211", "siteA")
    assert 0 <= s < 2**63
    others = {derive_seed(1, "IXI012-HH-1211", "siteA"), derive_seed(0, "IXI013-HH-1212", "siteA"),
              derive_seed(0, "IXI012-HH-1211", "siteB"), derive_seed(0, "siteA", "IXI012-HH-1211")}
    assert s not in others and len(others) == 4
    # sha256-based, so the value is the same on every platform and Python version.
    assert s == 3469788500676191140


# ---------------------------------------------------------------- reference and mask


def test_head_mask_covers_the_head_and_not_the_background(phantom):
    mask = head_mask(phantom)
    r = _radius()
    assert mask[r < 0.95].all()
    assert not mask[r > 1.05].any()


def test_reference_intensity_is_the_white_matter_level_of_the_phantom(phantom):
    _, zooms = voxel_axes(PSR)
    assert reference_intensity(phantom, head_mask(phantom), zooms) == pytest.approx(WM)


def test_voxel_axes_maps_psr_axes_to_world_axes():
    world, zooms = voxel_axes(PSR)
    assert world.tolist() == [1, 2, 0]
    assert np.allclose(zooms, 3.0)


# ---------------------------------------------------------------- contrast curve


@pytest.mark.parametrize("site", list(SITES))
def test_site_contrast_curve_is_strictly_increasing(site):
    f = contrast_curve(SITES[site])(np.linspace(0, 3, 3001))
    assert np.all(np.diff(f) > 0)


def test_random_site_curves_are_strictly_increasing_with_f1_equal_1():
    rng = np.random.default_rng(0)
    for k in range(20):
        site = random_site(f"rand{k}", rng)
        f = contrast_curve(site)(np.linspace(0, 3, 1001))
        assert np.all(np.diff(f) > 0)
        assert contrast_curve(site)(np.array([1.0]))[0] == pytest.approx(1.0)


def test_contrast_curve_passes_through_its_control_points():
    site = SITES["siteD"]
    u = np.array([p[0] for p in site.curve])
    assert np.allclose(contrast_curve(site)(u), [p[1] for p in site.curve])


def test_contrast_curve_changes_gm_wm_contrast_as_documented(phantom):
    # siteA's convex curve darkens GM relative to WM; siteB's concave curve brightens it.
    ratios = {}
    for name in ("siteA", "siteB"):
        f = contrast_curve(SITES[name])
        ratios[name] = f(np.array([GM / WM]))[0] / f(np.array([1.0]))[0]
    assert ratios["siteA"] < GM / WM - 0.08
    assert ratios["siteB"] > GM / WM + 0.08


def test_curve_only_site_maps_tissues_through_the_curve(phantom):
    site = _identity(curve=SITES["siteA"].curve)
    out = simulate(phantom, PSR, site, seed=0)
    f = contrast_curve(site)
    r = _radius()
    assert np.allclose(out[r < 0.5], WM * f(np.array([1.0]))[0], rtol=1e-5)
    assert np.allclose(out[(r > 0.65) & (r < 0.78)], WM * f(np.array([GM / WM]))[0], rtol=1e-5)
    assert np.all(out[r > 1.05] == 0)


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("level", [0.02, 0.06])
def test_noise_std_in_uniform_white_matter_matches_configured_level(phantom, level):
    out = simulate(phantom, PSR, _identity(noise=level), seed=5)
    core = _radius() < 0.5
    assert np.std(out[core]) == pytest.approx(level * WM, rel=0.08)


def test_background_noise_is_rician(phantom):
    # Magnitude of complex Gaussian noise on zero signal: Rayleigh, mean sigma * sqrt(pi / 2).
    sigma = 0.05 * WM
    out = simulate(phantom, PSR, _identity(noise=0.05), seed=6)
    background = out[_radius() > 1.1]
    assert background.min() >= 0
    assert background.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)


# ---------------------------------------------------------------- blur and slices


def test_blur_reduces_high_frequency_energy():
    box = _striped_box()
    sharp = simulate(box, PSR, _identity(), seed=0)
    blurred = simulate(box, PSR, _identity(blur_fwhm_mm=(6.0, 6.0, 6.0)), seed=0)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in box.shape], indexing="ij")
    high = np.sqrt(sum(f**2 for f in freqs)) > 0.25  # cycles / voxel
    energy = [float((np.abs(np.fft.fftn(v)) ** 2)[high].sum()) for v in (sharp, blurred)]
    assert energy[1] < 0.3 * energy[0]


def test_blur_acts_along_the_configured_world_axis():
    box = _striped_box()
    # FWHM along world y only; in PSR orientation world y is voxel axis 0.
    out = simulate(box, PSR, _identity(blur_fwhm_mm=(0.0, 5.0, 0.0)), seed=0)
    ratio = [_gradient_energy(out, ax) / _gradient_energy(box, ax) for ax in range(3)]
    assert ratio[0] < 0.6
    assert ratio[1] > 0.95 and ratio[2] > 0.95


def test_thick_slices_lose_detail_only_along_the_slice_axis():
    box = _striped_box()
    site = _identity(slice_thickness_mm=7.5, slice_axis=2)  # world z = voxel axis 1 in PSR
    out = simulate(box, PSR, site, seed=0)
    assert out.shape == box.shape
    ratio = [_gradient_energy(out, ax) / _gradient_energy(box, ax) for ax in range(3)]
    assert ratio[1] < 0.3
    assert ratio[0] > 0.95 and ratio[2] > 0.95


# ---------------------------------------------------------------- bias field


def test_bias_field_has_the_configured_amplitude():
    field = bias_field((48, 56, 48), PSR, 0.3, 60.0, np.random.default_rng(0))
    assert np.max(np.abs(field - 1.0)) == pytest.approx(0.3, abs=1e-5)
    assert field.min() >= 0.7 - 1e-6 and field.max() <= 1.3 + 1e-6


@pytest.mark.parametrize("scale_mm", [30.0, 60.0, 120.0])
def test_bias_field_is_smooth_at_its_spatial_scale(scale_mm):
    # The steepest change between neighbouring 3 mm voxels stays within 3 * amplitude * 3 mm / scale:
    # the field varies over scale_mm, not from voxel to voxel.
    for seed in range(3):
        field = bias_field((48, 56, 48), PSR, 0.3, scale_mm, np.random.default_rng(seed))
        steepest = max(np.abs(np.diff(field.astype(np.float64), axis=a)).max() for a in range(3))
        assert steepest < 3 * 0.3 * 3.0 / scale_mm


def test_bias_only_site_multiplies_the_image_by_the_field(phantom):
    site = _identity(bias_amplitude=0.25, bias_scale_mm=80.0)
    out = simulate(phantom, PSR, site, seed=11)
    # The bias field is the first draw of the generator seeded with `seed`.
    field = bias_field(phantom.shape, PSR, 0.25, 80.0, np.random.default_rng(11))
    assert np.allclose(out, phantom * field, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------- scale, offset


def test_global_scale_and_offset_are_applied_last(phantom):
    base = simulate(phantom, PSR, _identity(noise=0.03), seed=4)
    scaled = simulate(phantom, PSR, _identity(noise=0.03, scale=2.0, offset=0.05), seed=4)
    assert np.allclose(scaled, 2.0 * (base + 0.05 * WM), rtol=1e-5, atol=1e-2)


# ---------------------------------------------------------------- sites


def test_registry_has_at_least_four_distinct_valid_sites():
    assert len(SITES) >= 4
    assert all(name == s.name and name.isalnum() for name, s in SITES.items())
    assert len({json.dumps(s.to_dict() | {"name": ""}, sort_keys=True) for s in SITES.values()}) == len(SITES)


def test_sites_differ_more_than_two_seeds_of_one_site(real_scan):
    image, affine = real_scan
    mask = head_mask(image)

    def normalised_values(site, seed):
        out = simulate(image, affine, SITES[site], seed)[mask]
        return out / np.percentile(out, 99)  # the pipeline's percentile scaling removes global scale

    names = ["siteA", "siteB", "siteC", "siteD"]
    first = {n: normalised_values(n, 0) for n in names}
    same_site = max(wasserstein_distance(first[n], normalised_values(n, 1)) for n in names)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    between = min(wasserstein_distance(first[a], first[b]) for a, b in pairs)
    assert between > 5 * same_site


def test_site_parameters_roundtrip_through_json():
    for site in SITES.values():
        assert SiteEffect(**json.loads(json.dumps(site.to_dict()))) == site


def test_random_site_is_deterministic_for_a_seeded_generator():
    a = random_site("r", np.random.default_rng(3))
    b = random_site("r", np.random.default_rng(3))
    assert a == b
    assert len(a.curve) == len(CURVE_KNOTS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "site-A"}, "letters and digits"),
        ({"name": "s", "curve": ((0, 0), (0.5, 0.6), (1.0, 0.5))}, "increase strictly"),
        ({"name": "s", "curve": ((0.1, 0), (1.0, 1.0))}, "start at 0"),
        ({"name": "s", "bias_amplitude": 1.0}, "bias_amplitude"),
        ({"name": "s", "noise": -0.1}, "non-negative"),
        ({"name": "s", "slice_axis": 3}, "slice_axis"),
    ],
)
def test_site_effect_rejects_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SiteEffect(**kwargs)
