"""Spectral calibration: match a volume's power spectrum, band by band, to a target's.

A site's noise and blur (thick slices along one axis, in-plane smoothing, noise texture) change how the
image's power is spread over spatial frequencies, which a histogram does not see. The spectrum of the brain
(the volume times its mask, FFT over the whole grid) is summarised by its mean power in ``bins`` bands per
axis (``bins ** 3`` anisotropic bands of the absolute frequency along each axis, in cycles per voxel), per
brain voxel. A site's spectrum is the mean over its training images, stored in the bundle beside its
intensity histogram; a reference image gives its own.

:func:`match_spectrum` filters a volume by the real gain ``(P_target / P_own) ** (exponent / 2)`` in each
band (``exponent`` 1: the output's band powers become the target's). The filter is linear, zero-phase and
global, so it keeps the anatomy where it is; it blurs toward a blurrier target and sharpens toward a sharper
one, and it amplifies whatever the band holds (noise included). The gain can be measured on another volume
than the one it filters (``measure``): the harmonizer measures it on its input mapped onto the target's
intensity histogram (band powers depend on the contrast; the target's spectrum is in those units) and applies
it to its output before the output's own histogram calibration. Measured on held-out heads in
benchmarks/RESULTS.md ("Spectral calibration").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bands per axis of the stored spectra (``SPECTRUM_BINS ** 3`` values per site).
SPECTRUM_BINS = 8


def band_index(shape: Sequence[int], bins: int = SPECTRUM_BINS) -> np.ndarray:
    """Band of every coefficient of ``numpy.fft.rfftn`` on a ``shape`` grid, as a flat int array: the
    absolute frequency along each axis (0 to 0.5 cycles per voxel) cut into ``bins`` equal bands."""
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"expected a 3D grid of at least 2 voxels per axis, got {tuple(shape)}")
    freqs = [np.abs(np.fft.fftfreq(shape[0])), np.abs(np.fft.fftfreq(shape[1])), np.fft.rfftfreq(shape[2])]
    band = [np.minimum((f * 2.0 * bins).astype(np.int64), bins - 1) for f in freqs]
    return (band[0][:, None, None] * bins * bins + band[1][None, :, None] * bins + band[2][None, None, :]).ravel()


def _bins_of(spectrum) -> int:
    n = len(spectrum)
    bins = round(n ** (1.0 / 3.0))
    if bins ** 3 != n or bins < 1:
        raise ValueError(f"a band spectrum has bins**3 values; got {n}")
    return bins


def band_power(vol: np.ndarray, mask: np.ndarray, bins: int = SPECTRUM_BINS) -> np.ndarray:
    """Mean power per band of ``vol * mask``, divided by the number of brain voxels: ``(bins ** 3,)`` float64."""
    vol = np.asarray(vol, dtype=np.float64)
    mask = np.asarray(mask) > 0
    n = int(mask.sum())
    if n == 0:
        raise ValueError("the brain mask is empty")
    idx = band_index(vol.shape, bins)
    spec = np.fft.rfftn(vol * mask)
    total = np.bincount(idx, weights=(spec.real ** 2 + spec.imag ** 2).ravel(), minlength=bins ** 3)
    count = np.bincount(idx, minlength=bins ** 3)
    return total / np.maximum(count, 1) / n


def site_spectra(volumes, masks, sites, bins: int = SPECTRUM_BINS) -> dict:
    """Mean band power per site, as a bundle manifest stores it: ``{site: [value, ...]}`` (6 significant
    digits)."""
    out = {}
    for site in sorted(set(sites)):
        powers = [band_power(v, m, bins) for v, m, s in zip(volumes, masks, sites) if s == site]
        out[site] = [float(f"{p:.6g}") for p in np.mean(powers, axis=0)]
    return out


def match_spectrum(vol: np.ndarray, mask: np.ndarray, target, exponent: float = 1.0, measure=None) -> np.ndarray:
    """``vol`` filtered so that the band powers of its brain move toward ``target`` (a :func:`band_power`
    spectrum of the same grid): gain ``(target / own) ** (exponent / 2)`` per band, 1 where either power is
    zero. ``own`` is the band power of ``measure`` (default ``vol``; the harmonizer gives its input mapped
    onto the target's intensity histogram, in the units of ``target``). The brain (``vol * mask``) is filtered; voxels outside ``mask`` are returned unchanged."""
    target = np.asarray(target, dtype=np.float64)
    bins = _bins_of(target)
    vol = np.asarray(vol, dtype=np.float32)
    mask = np.asarray(mask) > 0
    own = band_power(vol if measure is None else measure, mask, bins)
    usable = (own > 0) & (target > 0)
    gain = np.ones_like(own)
    gain[usable] = (target[usable] / own[usable]) ** (0.5 * float(exponent))
    spec = np.fft.rfftn(np.where(mask, vol, 0.0).astype(np.float64))
    spec *= gain[band_index(vol.shape, bins)].reshape(spec.shape)
    filtered = np.fft.irfftn(spec, s=vol.shape, axes=(0, 1, 2))
    return np.where(mask, filtered, vol).astype(np.float32)
