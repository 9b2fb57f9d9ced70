"""Spectral calibration (hcld_bids.model.spectrum): bands, band powers, the matching filter."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from hcld_bids.model.spectrum import SPECTRUM_BINS, band_index, band_power, match_spectrum, site_spectra

GRID = (24, 32, 20)


def _head(seed=0, blur=1.0):
    rng = np.random.default_rng(seed)
    vol = ndi.gaussian_filter(rng.random(GRID), blur).astype(np.float32)
    mask = np.zeros(GRID, bool)
    mask[3:21, 4:28, 3:17] = True
    return vol, mask


def test_bands_cover_every_coefficient_and_split_each_axis_evenly():
    idx = band_index(GRID, 4)
    assert idx.shape == (GRID[0] * GRID[1] * (GRID[2] // 2 + 1),)
    assert idx.min() == 0 and idx.max() == 4 ** 3 - 1
    assert len(np.unique(idx)) == 64  # every band holds coefficients on this grid
    assert idx[0] == 0  # the DC term is in the lowest band
    with pytest.raises(ValueError, match="3D grid"):
        band_index((8, 8), 4)


def test_band_power_is_per_brain_voxel_and_needs_a_brain():
    vol, mask = _head()
    p = band_power(vol, mask)
    assert p.shape == (SPECTRUM_BINS ** 3,) and np.all(p >= 0)
    np.testing.assert_allclose(band_power(2 * vol, mask), 4 * p)  # power scales with the square
    with pytest.raises(ValueError, match="empty"):
        band_power(vol, np.zeros(GRID, bool))


def test_matching_its_own_spectrum_changes_nothing():
    vol, mask = _head()
    np.testing.assert_allclose(match_spectrum(vol, mask, band_power(vol, mask)), vol, atol=1e-5)


def test_matching_a_blurred_spectrum_blurs_along_that_axis_only_and_keeps_the_outside():
    vol, mask = _head(1, blur=0.6)
    target = band_power(ndi.gaussian_filter(vol, (0, 0, 2.0)), mask, 4)
    out = match_spectrum(vol, mask, target)
    assert np.array_equal(out[~mask], vol[~mask])
    before = np.abs(np.log(band_power(vol, mask, 4) / target))
    after = np.abs(np.log(band_power(out, mask, 4) / target))
    assert np.median(after) < 0.5 * np.median(before)  # the mask cut re-adds some edge power
    blurred = ndi.gaussian_filter(vol, (0, 0, 2.0))
    inner = ndi.binary_erosion(mask, iterations=3)

    def grad(v, axis):  # mean absolute difference along one axis, inside the brain
        return np.abs(np.diff(v, axis=axis)).mean(where=np.take(inner, range(GRID[axis] - 1), axis=axis))

    assert grad(out, 2) < 0.6 * grad(vol, 2)  # the blurred axis lost its high frequencies
    for axis in range(3):  # and every axis ends near the truly blurred volume (bands are coarse)
        assert abs(grad(out, axis) - grad(blurred, axis)) < 0.5 * abs(grad(vol, axis) - grad(blurred, axis))


def test_exponent_scales_the_filter_and_a_spectrum_of_the_wrong_size_is_refused():
    vol, mask = _head(2)
    target = band_power(ndi.gaussian_filter(vol, 1.5), mask, 4)
    half, full = match_spectrum(vol, mask, target, 0.5), match_spectrum(vol, mask, target, 1.0)
    dist = lambda v: np.abs(np.log(band_power(v, mask, 4) / target)).mean()  # noqa: E731
    assert dist(full) < dist(half) < dist(vol)
    with pytest.raises(ValueError, match="bins"):
        match_spectrum(vol, mask, np.ones(10))


def test_the_gain_can_be_measured_on_another_volume():
    vol, mask = _head(5)
    target = band_power(ndi.gaussian_filter(vol, 1.5), mask, 4)
    # measured on a copy at twice the contrast, the gain is a quarter in power: the output lands at half the target
    out = match_spectrum(vol, mask, target, measure=2 * vol)
    np.testing.assert_allclose(out[mask], 0.5 * match_spectrum(vol, mask, target)[mask], atol=1e-5)


def test_site_spectra_average_each_sites_images():
    a, mask = _head(3)
    b, _ = _head(4, blur=2.0)
    out = site_spectra([a, b, a], [mask] * 3, ["X", "Y", "X"], bins=2)
    assert sorted(out) == ["X", "Y"] and len(out["X"]) == 8
    np.testing.assert_allclose(out["X"], band_power(a, mask, 2), rtol=1e-5)
