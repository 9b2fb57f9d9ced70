"""Seeded simulator of scanner/site acquisition differences on a T1-weighted volume.

One simulated site is a :class:`SiteEffect`. :func:`simulate` renders a volume as that site would have
acquired it, in this order (the order of the physics: tissue contrast is set by the sequence, the receive
coil shades the signal, the point-spread function and slice profile smooth it, thermal noise is added to the
complex signal of what was actually sampled, and the reconstruction interpolates and rescales):

1. **Tissue-contrast curve.** Intensities are normalised robustly, ``u = I / R``, where ``R`` is the 90th
   percentile of the voxels lying at least 15 mm inside the head mask (Otsu threshold, holes filled,
   largest component). Deep inside a T1w head these voxels are mostly brain, so ``R`` sits at the level of
   bright white matter (in the IXI heads roughly ``u`` ≈ 0.2-0.35 for CSF, ≈ 0.55-0.65 for grey
   matter, ≈ 0.8-0.95 for white matter, above 1 for fat and vessels). A monotone piecewise-cubic curve
   (PCHIP) through the site's control points ``(u, f(u))`` maps ``u`` to ``f(u)``; beyond the last point
   it continues with the slope of the last segment. Because the curve is not a straight line through 0,
   it changes the GM/WM/CSF contrast ratios, not only the scale. The output is ``R * f(u)``.
2. **Bias field.** A smooth multiplicative field ``1 + a * b(x)``: ``b`` is a cubic B-spline through
   standard-normal values on a grid of control points spaced ``bias_scale_mm`` apart, divided by its
   largest absolute value over the volume, so the field spans at most ``[1 - a, 1 + a]`` and reaches one
   of the bounds.
3. **Blur.** An anisotropic Gaussian point-spread function with FWHM given in mm along the world axes
   (x = left-right, y = posterior-anterior, z = inferior-superior); converted to voxel axes through the
   affine.
4. **Slice thickness** (optional). Thick slices along one world axis: a Gaussian slice profile of FWHM
   ``slice_thickness_mm``, sampled every ``slice_thickness_mm``.
5. **Rician noise.** Independent Gaussian noise of standard deviation ``noise * R * f(1)`` (a fraction of
   the white-matter level after the curve) on the real and imaginary channels, then the magnitude — on
   the grid that was sampled, so with thick slices the noise is correlated along the slice axis after
   step 6.
6. Thick slices are interpolated linearly back to the input grid.
7. **Global scale and offset:** ``scale * (x + offset * R)``.

The same ``(image, affine, effect, seed)`` gives the identical array (one ``numpy.random.Generator`` per
call; the bias field is drawn before the noise). Callers derive ``seed`` from a base seed, the subject and
the site with :func:`derive_seed`, so every scan gets its own noise and field.

What a harmonizer has to undo
-----------------------------
The hcld-bids preprocessing runs N4 (which removes most of a smooth bias field) and scales intensities to
[0, 1] by percentiles (which removes the global scale and offset). What survives it, and what a harmonizer
must learn to undo, is the **contrast curve** (the GM/WM/CSF ratios), the **noise level and texture** and
the **blur / slice thickness**. The bias field and global scale are there so that the raw data look like
different scanners and the preprocessing is exercised, not as a harmonization target. Measured on one
IXI head (IXI614, antspyx N4 in the head mask, then division by the 99th percentile): a 35 % / 60 mm field
(coefficient of variation 8.9 % in the brighter half of the head) is left at 1.7 %; the Wasserstein
distance between head-mask intensity histograms is 0.023-0.166 between sites and 0.002-0.005 between two
seeds of one site.

The simulated images keep everything of the source: its anatomy, its own noise and the 8-bit quantisation
of the IXI files. The "clean" reference of a traveling subject is therefore the IXI scan as acquired at
Hammersmith, not a noise-free image.

Simulated sites (:data:`SITES`)
-------------------------------
Contrast-curve control points are given at ``u = (0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5)``; the identity is
``f(u) = u``. ``bias`` = amplitude ``a`` / control-point spacing; ``noise`` = fraction of the WM level;
``FWHM`` = (x, y, z) mm; ``slices`` = thickness along an axis.

======  ==========================================  ==========  ======  =============  ==========  =====  =====
site    f(u) at the control points                  bias        noise   FWHM (mm)      slices      scale  field
======  ==========================================  ==========  ======  =============  ==========  =====  =====
siteA   0, 0.10, 0.25, 0.46, 0.74, 1.00, 1.45       0.10/120mm  0.015   (0, 0, 0)      —           1.50   3 T
siteB   0, 0.32, 0.56, 0.74, 0.88, 1.00, 1.25       0.15/100mm  0.060   (1.5,1.5,1.5)  —           0.70   1.5 T
siteC   0, 0.18, 0.38, 0.59, 0.80, 1.00, 1.40       0.35/60mm   0.030   (1.5,1.5,0)    4 mm on z   1.00   1.5 T
siteD   0, 0.12, 0.30, 0.60, 0.86, 1.00, 1.15       0.20/90mm   0.025   (1, 3, 1)      —           1.10   3 T
======  ==========================================  ==========  ======  =============  ==========  =====  =====

Contrast ratios the curves give for typical tissue levels (CSF u = 0.3, GM u = 0.6, WM u = 0.9; the
identity gives GM/WM 0.67, CSF/WM 0.33):

- **siteA** — bright, sharp, high contrast, little noise (a 3 T MPRAGE-like look): convex curve, CSF and
  grey matter darker relative to white matter (GM/WM 0.52, CSF/WM 0.19).
- **siteB** — low contrast and noisy (a 1.5 T spoiled-gradient-echo-like look): concave curve that lifts
  CSF and compresses grey/white contrast (GM/WM 0.79, CSF/WM 0.48), 6 % noise, mild blur, dim.
- **siteC** — blurred with thick axial slices and a strong, tight bias field (a clinical 1.5 T look):
  near-linear curve (GM/WM 0.65, CSF/WM 0.31), 4 mm slices along z (inferior-superior) interpolated
  back to the input grid, in-plane blur, ±35 % shading.
- **siteD** — sigmoid curve: dark CSF (CSF/WM 0.21, GM/WM 0.64) and a compressed bright end (fat and
  the brightest white matter saturate near the WM level) — the opposite curvature to siteB at the dark
  end and to siteA at the bright end; blur mostly along y (anterior-posterior); a small offset (0.02 R).

:func:`random_site` draws new sites in and around these ranges for augmentation.

The image is assumed to be non-negative (a magnitude image); the output is float32, non-negative.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.interpolate import PchipInterpolator

__all__ = [
    "CURVE_KNOTS",
    "SITES",
    "SiteEffect",
    "bias_field",
    "contrast_curve",
    "derive_seed",
    "head_mask",
    "random_site",
    "reference_intensity",
    "restyle_model_volume",
    "restyle_unscaled",
    "simulate",
    "voxel_axes",
]

#: Normalised intensities (units of the reference ``R``) at which the built-in sites give their curve.
CURVE_KNOTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5)

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Voxels at least this deep inside the head mask define the reference intensity (mostly brain).
_CORE_DEPTH_MM = 15.0
_REFERENCE_PERCENTILE = 90.0


@dataclass(frozen=True)
class SiteEffect:
    """Acquisition characteristics of one simulated site (see the module docstring for each step).

    Attributes:
        name: site label (BIDS-safe: letters and digits).
        curve: control points ``((u0, f0), (u1, f1), ...)`` of the monotone contrast curve, ``u``
            strictly increasing from 0, ``f`` strictly increasing and non-negative.
        bias_amplitude: ``a`` in ``1 + a * b(x)``, ``0 <= a < 1``.
        bias_scale_mm: spacing of the bias-field spline control points (larger = smoother).
        noise: Rician noise standard deviation as a fraction of the white-matter level.
        blur_fwhm_mm: Gaussian PSF FWHM along world (x, y, z), mm; 0 = no blur on that axis.
        slice_thickness_mm: thick-slice acquisition, mm; 0 = none.
        slice_axis: world axis of the thick slices (0 = x, 1 = y, 2 = z).
        scale: global intensity scale.
        offset: global offset, as a fraction of ``R``, added before scaling.
        field_strength: nominal magnetic field strength in tesla; metadata for sidecars only.
    """

    name: str
    curve: tuple[tuple[float, float], ...] = tuple((k, k) for k in CURVE_KNOTS)
    bias_amplitude: float = 0.0
    bias_scale_mm: float = 100.0
    noise: float = 0.0
    blur_fwhm_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    slice_thickness_mm: float = 0.0
    slice_axis: int = 2
    scale: float = 1.0
    offset: float = 0.0
    field_strength: float = 3.0

    def __post_init__(self):
        if not self.name or not self.name.isalnum():
            raise ValueError(f"site name {self.name!r} must be letters and digits only (a BIDS label)")
        curve = tuple((float(u), float(f)) for u, f in self.curve)
        object.__setattr__(self, "curve", curve)
        object.__setattr__(self, "blur_fwhm_mm", tuple(float(v) for v in self.blur_fwhm_mm))
        u = np.array([p[0] for p in curve])
        f = np.array([p[1] for p in curve])
        if len(curve) < 2 or u[0] != 0.0 or np.any(np.diff(u) <= 0):
            raise ValueError(f"{self.name}: curve u must start at 0 and increase strictly")
        if f[0] < 0 or np.any(np.diff(f) <= 0):
            raise ValueError(f"{self.name}: curve f must be non-negative and increase strictly")
        if not 0.0 <= self.bias_amplitude < 1.0:
            raise ValueError(f"{self.name}: bias_amplitude must be in [0, 1)")
        if self.bias_scale_mm <= 0:
            raise ValueError(f"{self.name}: bias_scale_mm must be positive")
        if self.noise < 0 or self.slice_thickness_mm < 0 or min(self.blur_fwhm_mm) < 0:
            raise ValueError(f"{self.name}: noise, blur and slice thickness must be non-negative")
        if len(self.blur_fwhm_mm) != 3 or self.slice_axis not in (0, 1, 2):
            raise ValueError(f"{self.name}: blur_fwhm_mm needs 3 values and slice_axis is 0, 1 or 2")
        if self.scale <= 0:
            raise ValueError(f"{self.name}: scale must be positive")

    def to_dict(self) -> dict:
        """Plain JSON-serialisable parameters (curve as a list of [u, f] pairs)."""
        out = asdict(self)
        out["curve"] = [list(p) for p in self.curve]
        out["blur_fwhm_mm"] = list(self.blur_fwhm_mm)
        return out


def _site(name, f_values, **kwargs) -> SiteEffect:
    return SiteEffect(name=name, curve=tuple(zip(CURVE_KNOTS, f_values)), **kwargs)


#: The built-in simulated sites, by name (numbers in the module docstring).
SITES: dict[str, SiteEffect] = {
    s.name: s
    for s in (
        _site("siteA", (0, 0.10, 0.25, 0.46, 0.74, 1.00, 1.45), bias_amplitude=0.10,
              bias_scale_mm=120.0, noise=0.015, scale=1.5, field_strength=3.0),
        _site("siteB", (0, 0.32, 0.56, 0.74, 0.88, 1.00, 1.25), bias_amplitude=0.15,
              bias_scale_mm=100.0, noise=0.06, blur_fwhm_mm=(1.5, 1.5, 1.5), scale=0.7,
              field_strength=1.5),
        _site("siteC", (0, 0.18, 0.38, 0.59, 0.80, 1.00, 1.40), bias_amplitude=0.35,
              bias_scale_mm=60.0, noise=0.03, blur_fwhm_mm=(1.5, 1.5, 0.0), slice_thickness_mm=4.0,
              slice_axis=2, scale=1.0, field_strength=1.5),
        _site("siteD", (0, 0.12, 0.30, 0.60, 0.86, 1.00, 1.15), bias_amplitude=0.20,
              bias_scale_mm=90.0, noise=0.025, blur_fwhm_mm=(1.0, 3.0, 1.0), scale=1.1, offset=0.02,
              field_strength=3.0),
    )
}


def derive_seed(base_seed: int, *keys: str) -> int:
    """A stable 63-bit seed from a base seed and labels (e.g. subject and site); same on every platform."""
    text = "\x1f".join([str(int(base_seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def voxel_axes(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World axis (0 = x, 1 = y, 2 = z) of each voxel axis and the voxel sizes in mm, from a 4x4 affine."""
    rot = np.asarray(affine, dtype=float)[:3, :3]
    zooms = np.linalg.norm(rot, axis=0)
    if np.any(zooms <= 0):
        raise ValueError("affine has a zero-length voxel axis")
    world = np.argmax(np.abs(rot / zooms), axis=0)
    if len(set(world.tolist())) != 3:
        raise ValueError("affine is too oblique to map voxel axes to world axes")
    return world, zooms


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist, dtype=float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    return float(centres[np.nanargmax(between[:-1])])


def head_mask(image: np.ndarray) -> np.ndarray:
    """Head (foreground) mask: Otsu threshold, closing, holes filled, largest connected component.

    Args:
        image: (X, Y, Z) non-negative volume.
    Returns:
        (X, Y, Z) bool.
    """
    image = np.asarray(image)
    mask = image > _otsu_threshold(image[np.isfinite(image)])
    mask = ndi.binary_closing(mask, iterations=2)
    mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n == 0:
        raise ValueError("image has no foreground (constant volume?)")
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def reference_intensity(image: np.ndarray, mask: np.ndarray, zooms) -> float:
    """``R``: the 90th percentile of voxels at least 15 mm inside ``mask`` (≈ bright white matter).

    Falls back to the whole mask when the head is too small to have such a core.
    """
    depth = ndi.distance_transform_edt(mask, sampling=zooms)
    core = depth >= _CORE_DEPTH_MM
    values = image[core] if core.sum() >= 100 else image[mask]
    ref = float(np.percentile(values, _REFERENCE_PERCENTILE))
    if not ref > 0:
        raise ValueError("reference intensity is not positive (empty or negative image?)")
    return ref


def contrast_curve(effect: SiteEffect):
    """The site's monotone intensity transfer function ``f``: a callable on arrays of ``u >= 0``."""
    u = np.array([p[0] for p in effect.curve])
    f = np.array([p[1] for p in effect.curve])
    inner = PchipInterpolator(u, f, extrapolate=False)
    end_slope = (f[-1] - f[-2]) / (u[-1] - u[-2])

    def apply(values):
        values = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
        out = inner(np.minimum(values, u[-1]))
        beyond = values > u[-1]
        out[beyond] = f[-1] + (values[beyond] - u[-1]) * end_slope
        return out

    return apply


def bias_field(shape, affine, amplitude: float, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field ``1 + amplitude * b`` with ``max |b| = 1``.

    ``b`` is a cubic B-spline through standard-normal values on control points ``scale_mm`` apart.

    Returns:
        float32 array of ``shape`` (X, Y, Z).
    """
    _, zooms = voxel_axes(affine)
    extent = np.asarray(shape) * zooms
    # Three spare control points per axis so that the spline has support beyond the edges.
    n_ctrl = np.ceil(extent / scale_mm).astype(int) + 3
    ctrl = rng.standard_normal(tuple(n_ctrl))
    coords = [(np.arange(n) * z) / scale_mm + 1.0 for n, z in zip(shape, zooms)]
    grid = np.meshgrid(*coords, indexing="ij")
    b = ndi.map_coordinates(ctrl, grid, order=3, mode="nearest")
    b /= np.max(np.abs(b))
    return (1.0 + amplitude * b).astype(np.float32)


def _resample_axis(volume: np.ndarray, axis: int, step: float, n_out: int) -> np.ndarray:
    """Linear samples of ``volume`` along ``axis`` at positions ``0, step, 2 step, ...`` (n_out of them)."""
    matrix = np.ones(3)
    matrix[axis] = step
    matrix = np.diag(matrix)
    out_shape = list(volume.shape)
    out_shape[axis] = n_out
    return ndi.affine_transform(volume, matrix, output_shape=tuple(out_shape), order=1, mode="nearest")


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(real, imag)


def simulate(image: np.ndarray, affine: np.ndarray, effect: SiteEffect, seed: int) -> np.ndarray:
    """Render ``image`` as acquired at the simulated site ``effect``.

    Args:
        image: (X, Y, Z) non-negative T1w volume (any dtype; computed in float32).
        affine: 4x4 voxel-to-world affine of ``image`` (gives voxel sizes and which voxel axis is x/y/z).
        effect: the site.
        seed: seed of the random bias field and noise; same inputs and seed give the same array.
    Returns:
        (X, Y, Z) float32, non-negative.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or not np.all(np.isfinite(image)):
        raise ValueError(f"expected a finite 3D volume, got shape {image.shape}")
    world, zooms = voxel_axes(affine)
    rng = np.random.default_rng(seed)

    mask = head_mask(image)
    ref = reference_intensity(image, mask, zooms)
    curve = contrast_curve(effect)
    out = (ref * curve(image / ref)).astype(np.float32)
    wm_level = ref * float(curve(np.array([1.0]))[0])

    if effect.bias_amplitude > 0:
        out *= bias_field(image.shape, affine, effect.bias_amplitude, effect.bias_scale_mm, rng)

    sigmas = [effect.blur_fwhm_mm[world[ax]] * _FWHM_TO_SIGMA / zooms[ax] for ax in range(3)]
    thick_axis = int(np.flatnonzero(world == effect.slice_axis)[0])
    step = effect.slice_thickness_mm / zooms[thick_axis]
    thick = step > 1.0
    if thick:
        # Slice profile: Gaussian of FWHM equal to the thickness, combined with any PSF blur on that axis.
        profile = effect.slice_thickness_mm * _FWHM_TO_SIGMA / zooms[thick_axis]
        sigmas[thick_axis] = float(np.hypot(sigmas[thick_axis], profile))
    if max(sigmas) > 0:
        out = ndi.gaussian_filter(out, sigmas, mode="nearest", truncate=3.0)

    n_in = image.shape[thick_axis]
    if thick:
        n_slices = int(np.floor((n_in - 1) / step)) + 1
        out = _resample_axis(out, thick_axis, step, n_slices)

    if effect.noise > 0:
        out = _rician(np.maximum(out, 0.0), effect.noise * wm_level, rng)

    if thick:
        out = _resample_axis(out, thick_axis, 1.0 / step, n_in)

    out = effect.scale * (np.maximum(out, 0.0) + effect.offset * ref)
    return out.astype(np.float32)


def random_site(name: str, rng: np.random.Generator) -> SiteEffect:
    """A random plausible site for augmentation, spanning and slightly exceeding the :data:`SITES` ranges.

    The curve is the identity with random log-slopes per segment (std 0.3), rescaled so ``f(1) = 1``:
    monotone by construction.
    """
    knots = np.array(CURVE_KNOTS)
    slopes = np.exp(0.3 * rng.standard_normal(len(knots) - 1))
    f = np.concatenate([[0.0], np.cumsum(slopes * np.diff(knots))])
    f /= f[list(knots).index(1.0)]
    thick = float(rng.choice([0.0, 0.0, 4.0, 5.0]))
    return SiteEffect(
        name=name,
        curve=tuple(zip(knots.tolist(), f.tolist())),
        bias_amplitude=float(rng.uniform(0.0, 0.4)),
        bias_scale_mm=float(rng.uniform(50.0, 150.0)),
        noise=float(rng.uniform(0.005, 0.07)),
        blur_fwhm_mm=tuple(rng.uniform(0.0, 3.0, size=3).tolist()),
        slice_thickness_mm=thick,
        slice_axis=int(rng.integers(0, 3)),
        scale=float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))),
        offset=float(rng.uniform(0.0, 0.03)),
        field_strength=float(rng.choice([1.5, 3.0])),
    )


def restyle_model_volume(volume: np.ndarray, effect: SiteEffect, rng: np.random.Generator,
                         voxel_mm: float = 2.0) -> np.ndarray:
    """Re-render a *preprocessed* model-grid volume as if ``effect``'s scanner had acquired it (augmentation).

    The model grid holds skull-stripped, bias-corrected images scaled to [0, 1]; the steps of :func:`simulate`
    that survive that preprocessing are applied to the brain voxels (``volume > 0``): the contrast curve
    (with ``R`` the 90th brain percentile), the blur and the slice profile (as a blur along the slice axis of
    the isotropic ``voxel_mm`` grid, whose axes are the template's x, y, z), Rician noise; then the result is
    rescaled like the preprocessing (brain percentiles 0.5 / 99.5 to 0 / 1, clipped) and zeroed outside the
    brain. Bias field, global scale and offset are left out: the preprocessing removes them. Cheap (about 0.1 s
    at 2 mm), so it can run on every training step.

    Args:
        volume: ``(X, Y, Z)`` float array in [0, 1], zero outside the brain.
        effect: the site to render (e.g. :func:`random_site`).
        rng: draws the noise.
    Returns:
        float32 array of the same shape in [0, 1].
    """
    from .preproc.intensity import scale_intensity, scaling_reference

    vol = np.asarray(volume, dtype=np.float32)
    out = restyle_unscaled(vol, effect, rng, voxel_mm)
    if out is None:
        return vol.copy()
    brain = vol > 0
    low, high = scaling_reference(out, brain)
    out = scale_intensity(out, low, high)
    out[~brain] = 0.0
    return out


def restyle_unscaled(volume: np.ndarray, effect: SiteEffect, rng: np.random.Generator,
                     voxel_mm: float = 2.0, resample_slices: bool = False) -> np.ndarray | None:
    """:func:`restyle_model_volume` before its final rescaling (None when the volume has too little brain or
    no positive reference intensity). With ``resample_slices``, thick slices are also sampled as
    :func:`simulate` samples them (every ``thickness / voxel_mm`` voxels, noise added there, then linearly
    interpolated back), so that their noise is correlated along the slice axis."""
    vol = np.asarray(volume, dtype=np.float32)
    brain = vol > 0
    if brain.sum() < 100:
        return None
    ref = float(np.percentile(vol[brain], _REFERENCE_PERCENTILE))
    if not ref > 0:
        return None
    curve = contrast_curve(effect)
    out = np.zeros_like(vol)
    out[brain] = ref * curve(vol[brain] / ref)
    wm_level = ref * float(curve(np.array([1.0]))[0])
    sigmas = [f * _FWHM_TO_SIGMA / voxel_mm for f in effect.blur_fwhm_mm]
    if effect.slice_thickness_mm > voxel_mm:
        profile = effect.slice_thickness_mm * _FWHM_TO_SIGMA / voxel_mm
        sigmas[effect.slice_axis] = float(np.hypot(sigmas[effect.slice_axis], profile))
    if max(sigmas) > 0:
        out = ndi.gaussian_filter(out, sigmas, mode="nearest", truncate=3.0)
    step = effect.slice_thickness_mm / voxel_mm
    thick = resample_slices and step > 1.0
    axis, n_in = effect.slice_axis, vol.shape[effect.slice_axis]
    if thick:
        out = _resample_axis(out, axis, step, int(np.floor((n_in - 1) / step)) + 1)
    if effect.noise > 0:
        out = _rician(np.maximum(out, 0.0), effect.noise * wm_level, rng)
    if thick:
        out = _resample_axis(out, axis, 1.0 / step, n_in)
    return out
