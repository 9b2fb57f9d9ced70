"""Quality metrics of one harmonized image: intensity histograms, distances between them, anatomy guard.

All images are arrays on one grid (the template grid of the model), intensities scaled to [0, 1] inside
the brain as the participant level writes them (``desc-preproc``: N4, registered, scaled, not
skull-stripped; ``desc-harmonized``: same units, zero outside the brain mask). Only numpy and scipy.

Histograms
    :func:`brain_histogram` bins brain voxels into ``bins`` equal bins over [0, 1] (values outside are
    clipped into the end bins) and returns a *density* (integral 1). :func:`wasserstein_1d` is the
    earth mover's (Wasserstein-1) distance between two such histograms, with each bin's mass placed at
    its centre, in intensity units (fraction of the [0, 1] range): 0.05 means that on average the
    brain voxels would have to move by 5 % of the intensity range.

Anatomy-preservation guard
    Harmonization should change contrast, not anatomy. :func:`structure_preservation` compares the
    *directions* of the intensity gradients of input and output inside the brain:

        SP = sum_x <g_in(x), g_out(x)> / sum_x |g_in(x)| |g_out(x)|

    with ``g`` the gradient of the brain smoothed by a Gaussian of ``STRUCTURE_SIGMA_MM`` (2 mm) with
    normalized convolution (brain voxels only: the zero background of the brain-only output and the
    skull of the whole-head input do not enter), summed over the brain mask less a rim of twice that
    width (4 mm). A monotone increasing intensity remapping ``f`` multiplies every
    gradient by ``f' >= 0`` and so keeps its direction: SP is exactly 1 for a linear ``f`` and stays
    near 1 for a strongly nonlinear one (the smoothing comes after ``f``); edges that move,
    vanish or appear make the two gradient fields disagree and SP drops (to about 0.5 for another
    person's registered head, 0 for unrelated images, below 0 for inverted contrast). Magnitude
    weighting lets strong edges (tissue boundaries) count and flat noisy regions hardly at all.

    :func:`structure_scores` also computes the same ratio per block of ``LOCAL_BLOCK_MM`` (24 mm);
    :func:`local_structure_preservation` is its worst block and catches changes confined to one region
    (a removed or added structure of about 15 mm) that the whole-brain SP averages away.

Thresholds, measured with ``benchmarks/structure_threshold.py`` on 10 real IXI heads each seen at four
simulated sites, preprocessed like the participant level (N4, ANTs affine to MNI152NLin6Asym 2 mm,
template brain mask, percentile scaling); min .. max over the subjects (and site pairs):

=================================================  ==============  =================  ===============
input -> output                                    SP              worst 24 mm block  mask Dice
=================================================  ==============  =================  ===============
honest: same head at another site (120 pairs)      0.955 .. 0.996  0.816 .. 0.988    0.998 .. 0.999
honest: matched to another site, brain only,       0.981 .. 0.995  0.936 .. 0.991    1.000
        blurred FWHM 3 mm (edge darkens)
honest: gamma 0.5 / 2, sigmoid, + noise 0.03       0.996 .. 0.998  0.983 .. 0.997    0.995 .. 1.000
honest: blur FWHM 4 mm; noise 0.05                 0.982 .. 0.998  0.962 .. 0.994    0.998 .. 1.000
damage: whole image shifted 2 mm                   0.919 .. 0.932  0.768 .. 0.855    0.997 .. 0.998
damage: whole image shifted 4 mm                   0.685 .. 0.742  0.077 .. 0.418    0.995 .. 0.998
damage: blur FWHM 8 mm                             0.868 .. 0.891  0.727 .. 0.790    1.000
damage: another person's head                      0.479 .. 0.573  -0.33 .. 0.135    0.998 .. 0.999
damage: dark blob, radius 8 mm                     0.996 .. 0.997  0.577 .. 0.800    0.998 .. 0.999
damage: top 18 mm of the brain zeroed              0.945 .. 0.965  0.066 .. 0.475    0.944
not caught: smooth warp 4 mm                       0.965 .. 0.982  0.734 .. 0.927    0.999 .. 1.000
not caught: 16 mm region blurred away              0.998 .. 0.999  0.892 .. 0.952    0.998 .. 0.999
not caught: 24 mm block moved by 4 mm              0.998 .. 0.999  0.868 .. 0.978    0.998 .. 0.999
=================================================  ==============  =================  ===============

hence :data:`STRUCTURE_THRESHOLD` = 0.945 (between the worst honest case, 0.955, and the mildest
global damage, 0.932), :data:`LOCAL_STRUCTURE_THRESHOLD` = 0.78 (below every honest block, 0.816;
catches 9 of the 10 blobs and every zeroed slab) and :data:`MASK_DICE_THRESHOLD` = 0.97 (honest
>= 0.995, zeroed slab 0.944). The margins are narrow (about 0.01 for SP) and the honest cases are
simulated: recalibrate on real model outputs with the same script when they exist. What is not
caught (smooth warps up to 4 mm, a region blurred or moved within the brain) is for a human to see
in the participant report, which shows the block map and the difference image.

Brain-mask agreement
    The harmonized image is zero outside the brain mask by construction. :func:`output_mask` re-derives
    a mask from it (non-zero voxels, closed and hole-filled, so dark CSF inside the brain counts);
    :func:`mask_dice` of that and the input mask is 1 for a complete output and drops when the
    output lost part of the brain (e.g. the model's crop window cut it off, or a region came out
    empty).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy import stats

#: Number of histogram bins over [0, 1] used everywhere (sidecars, reports, model bundles).
HISTOGRAM_BINS = 64
#: Gaussian scale of the gradients compared by the structure guard, in millimetres.
STRUCTURE_SIGMA_MM = 2.0
#: Edge of the blocks of :func:`structure_scores`, in millimetres.
LOCAL_BLOCK_MM = 24.0
#: A block enters :func:`local_structure_preservation` when at least this fraction of it is brain.
LOCAL_MIN_BRAIN_FRACTION = 0.5
#: Whole-brain structure preservation below this flags ``structure-changed`` (see module docstring).
STRUCTURE_THRESHOLD = 0.945
#: Worst-block structure preservation below this flags ``structure-changed-locally``.
LOCAL_STRUCTURE_THRESHOLD = 0.78
#: Dice of input mask and re-derived output mask below this flags ``mask-mismatch``.
MASK_DICE_THRESHOLD = 0.97
#: Output voxels above this intensity count as brain in :func:`output_mask`.
OUTPUT_MASK_LEVEL = 1e-3
#: The output is ``farther-from-target`` when its distance exceeds the input's by more than this.
WASSERSTEIN_TOLERANCE = 0.01
#: Smoothing (voxels of the template grid) of :func:`template_similarity`.
TEMPLATE_SIGMA_VOXELS = 1.0
#: Template similarity below this flags ``unlike-a-brain``. Measured (2 mm grid, 2026-12-07): 0.37-0.64 for the
#: 64 preprocessed held-out IXI images of four simulated sites, 0.31-0.60 for the three vendor scans of the demo
#: (0.33-0.51 with --sloppy); -0.01 to 0.03 for noise, shuffled voxels and a smooth blob given as T1w.
TEMPLATE_SIMILARITY_THRESHOLD = 0.15
#: Flags :func:`image_qc` may set.
FLAG_STRUCTURE = "structure-changed"
FLAG_STRUCTURE_LOCAL = "structure-changed-locally"
FLAG_MASK = "mask-mismatch"
FLAG_FARTHER = "farther-from-target"
FLAG_EMPTY = "empty-output"
FLAG_NOT_A_BRAIN = "unlike-a-brain"
QC_FLAGS = (FLAG_STRUCTURE, FLAG_STRUCTURE_LOCAL, FLAG_MASK, FLAG_FARTHER, FLAG_EMPTY, FLAG_NOT_A_BRAIN)


def histogram_edges(bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """``bins + 1`` equally spaced edges over [0, 1]."""
    return np.linspace(0.0, 1.0, bins + 1)


def brain_histogram(img, mask, bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Intensity histogram of the brain: ``(edges (bins+1,), density (bins,))`` over [0, 1].

    ``img`` and ``mask``: arrays of one shape (``mask`` > 0 is brain). Values outside [0, 1] go to the
    end bins. The density integrates to 1; an empty mask gives all zeros.
    """
    img = np.asarray(img)
    mask = np.asarray(mask) > 0
    if img.shape != mask.shape:
        raise ValueError(f"image {img.shape} and mask {mask.shape} differ in shape")
    edges = histogram_edges(bins)
    values = np.clip(img[mask].astype(np.float64, copy=False), 0.0, 1.0)
    if values.size == 0:
        return edges, np.zeros(bins)
    counts = np.bincount(np.minimum((values * bins).astype(np.int64), bins - 1), minlength=bins)
    return edges, counts / (values.size * np.diff(edges))


def _masses(density, edges) -> np.ndarray:
    mass = np.asarray(density, dtype=np.float64) * np.diff(np.asarray(edges, dtype=np.float64))
    total = mass.sum()
    return mass / total if total > 0 else mass


def rebin_density(density, edges, new_edges) -> np.ndarray:
    """A histogram density on ``edges`` re-expressed on ``new_edges`` (mass spread evenly in each bin)."""
    edges = np.asarray(edges, dtype=np.float64)
    new_edges = np.asarray(new_edges, dtype=np.float64)
    if edges.shape == new_edges.shape and np.allclose(edges, new_edges):
        return np.asarray(density, dtype=np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(_masses(density, edges))])
    mass = np.diff(np.interp(new_edges, edges, cdf))
    return mass / np.diff(new_edges)


def wasserstein_1d(hist_a, hist_b, edges) -> float:
    """Wasserstein-1 distance between two histogram densities on the same ``edges``.

    Each bin's mass sits at the bin centre; the result is in intensity units. Empty histograms give NaN.
    """
    edges = np.asarray(edges, dtype=np.float64)
    mass_a, mass_b = _masses(hist_a, edges), _masses(hist_b, edges)
    if mass_a.sum() == 0 or mass_b.sum() == 0:
        return math.nan
    centres = 0.5 * (edges[:-1] + edges[1:])
    return float(stats.wasserstein_distance(centres, centres, mass_a, mass_b))


def wasserstein_samples(a, b) -> float:
    """Wasserstein-1 distance between two samples of intensities (exact, no binning)."""
    return float(stats.wasserstein_distance(np.ravel(a), np.ravel(b)))


def _voxel_mm(voxel_size_mm) -> float:
    if voxel_size_mm is None:
        return 2.0
    sizes = np.atleast_1d(np.asarray(voxel_size_mm, dtype=np.float64))
    return float(sizes[:3].mean())


def _masked_gradients(volume: np.ndarray, mask: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Gradient ``(3, X, Y, Z)`` float32 of the brain of ``volume`` smoothed by normalized convolution.

    ``G * (v m) / G * m`` averages brain voxels only, so neither the zero background of a brain-only
    image nor the skull of a whole-head one leaks into the brain's gradients, and a linear remapping of
    the intensities leaves the gradient directions exactly unchanged.
    """
    weights = ndi.gaussian_filter(mask.astype(np.float32), sigma_vox, mode="constant")
    smoothed = ndi.gaussian_filter(np.where(mask, volume, 0).astype(np.float32), sigma_vox, mode="constant")
    smoothed = np.divide(smoothed, weights, out=np.zeros_like(smoothed), where=weights > 1e-3)
    return np.stack(np.gradient(smoothed))


def _agreement_terms(input_img, output_img, mask, voxel_size_mm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel ``<g_in, g_out>`` and ``|g_in||g_out|`` (zero outside the eroded mask) and that mask."""
    input_img = np.asarray(input_img)
    output_img = np.asarray(output_img)
    mask = np.asarray(mask) > 0
    if not input_img.shape == output_img.shape == mask.shape:
        raise ValueError(f"shapes differ: input {input_img.shape}, output {output_img.shape}, mask {mask.shape}")
    sigma_vox = STRUCTURE_SIGMA_MM / _voxel_mm(voxel_size_mm)
    # the outer rim (twice the smoothing scale) is left out: there the normalized convolution rests on
    # few brain voxels, and a model fed skull-stripped images blurs its output's edge into the background
    inner = ndi.binary_erosion(mask, iterations=max(1, int(math.ceil(2 * sigma_vox))))
    g_in = _masked_gradients(input_img, mask, sigma_vox)
    g_out = _masked_gradients(output_img, mask, sigma_vox)
    dot = np.einsum("i...,i...->...", g_in, g_out) * inner
    mag = np.sqrt(np.einsum("i...,i...->...", g_in, g_in) * np.einsum("i...,i...->...", g_out, g_out)) * inner
    return dot, mag, inner


def structure_preservation(input, output, mask, *, voxel_size_mm=None) -> float:  # noqa: A002 - interface name
    """Magnitude-weighted agreement of gradient directions of ``input`` and ``output`` inside ``mask``.

    1 for a linear and close to 1 for any monotone increasing intensity remapping, lower when anatomy
    moved, vanished or appeared (see the module docstring). ``voxel_size_mm``: voxel size (scalar or per
    axis), default 2 mm. NaN when either image has no gradient inside the brain.
    """
    return structure_scores(input, output, mask, voxel_size_mm=voxel_size_mm)[0]


def _block_sums(volume: np.ndarray, block: int) -> np.ndarray:
    padded_shape = [int(math.ceil(n / block)) * block for n in volume.shape]
    padded = np.zeros(padded_shape, dtype=np.float64)
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    x, y, z = (n // block for n in padded_shape)
    return padded.reshape(x, block, y, block, z, block).sum(axis=(1, 3, 5))


def structure_scores(input, output, mask, *, voxel_size_mm=None) -> tuple[float, np.ndarray, int]:  # noqa: A002
    """Whole-brain structure preservation and its map per block of :data:`LOCAL_BLOCK_MM`.

    Returns ``(sp, block_scores (bx, by, bz), block)``: ``block`` is the block edge in voxels, block
    ``(i, j, k)`` covers voxels ``[i*block, (i+1)*block)`` along each axis; blocks less than
    :data:`LOCAL_MIN_BRAIN_FRACTION` brain (eroded mask) are NaN. One pass of gradients for both.
    """
    dot, mag, inner = _agreement_terms(input, output, mask, voxel_size_mm)
    total = float(mag.sum(dtype=np.float64))
    sp = float(dot.sum(dtype=np.float64)) / total if total > 0 else math.nan
    block = max(2, int(round(LOCAL_BLOCK_MM / _voxel_mm(voxel_size_mm))))
    sum_dot, sum_mag = _block_sums(dot, block), _block_sums(mag, block)
    brain = _block_sums(inner.astype(np.float64), block) / block**3
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where((brain >= LOCAL_MIN_BRAIN_FRACTION) & (sum_mag > 0), sum_dot / sum_mag, np.nan)
    return sp, scores, block


def worst_block(block_scores: np.ndarray) -> float:
    """The lowest finite block score (NaN when there is none)."""
    return float(np.nanmin(block_scores)) if np.isfinite(block_scores).any() else math.nan


def local_structure_preservation(input, output, mask, *, voxel_size_mm=None) -> float:  # noqa: A002
    """The worst block of :func:`structure_scores` (NaN when no block has enough brain)."""
    return worst_block(structure_scores(input, output, mask, voxel_size_mm=voxel_size_mm)[1])


def output_mask(output, mask=None) -> np.ndarray:
    """Brain mask re-derived from a brain-only output: voxels above :data:`OUTPUT_MASK_LEVEL`, closed
    by one voxel, holes filled, largest connected component. With ``mask``, limited to its bounding
    box plus one voxel (the output is zero elsewhere by construction)."""
    found = np.asarray(output) > OUTPUT_MASK_LEVEL
    if not found.any():
        return found
    found = ndi.binary_closing(found, iterations=1, border_value=0) | found
    found = ndi.binary_fill_holes(found)
    labels, count = ndi.label(found)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        found = labels == sizes.argmax()
    if mask is not None:
        found &= ndi.binary_dilation(np.asarray(mask) > 0, iterations=1)
    return found


def mask_dice(a, b) -> float:
    """Dice overlap of two boolean masks (1 when both are empty)."""
    a = np.asarray(a) > 0
    b = np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def mean_absolute_change(input, output, mask) -> float:  # noqa: A002 - interface name
    """Mean absolute difference of output and input inside the brain, in units of the [0, 1] range (how much
    harmonization changed the image; for an image already at the target site, all of it is change it did not
    need). NaN for an empty mask."""
    brain = np.asarray(mask) > 0
    if not brain.any():
        return math.nan
    diff = np.asarray(output, dtype=np.float64)[brain] - np.asarray(input, dtype=np.float64)[brain]
    return float(np.abs(diff).mean())


def template_similarity(preproc, template, template_mask, sigma_voxels: float = TEMPLATE_SIGMA_VOXELS) -> float:
    """Correlation of the preprocessed image with the template's T1w inside the template's brain mask (eroded
    by twice the smoothing), both smoothed by ``sigma_voxels`` (a Gaussian): how much the input, placed by the
    registration, looks like a brain where the template has one. Low for an input that is not a T1w head
    (noise, another contrast's artefact) or a registration that failed. NaN when either image is constant
    there."""
    from scipy import ndimage as ndi

    # away from the mask's outline by twice the smoothing: the zeros outside the brain do not enter the
    # smoothed values, so the outline's shape (the same for any masked image) does not count as similarity
    region = ndi.binary_erosion(np.asarray(template_mask) > 0, iterations=max(1, int(round(2 * sigma_voxels))))
    a, b = (ndi.gaussian_filter(np.asarray(x, dtype=np.float64), sigma_voxels) for x in (preproc, template))
    a, b = a[region], b[region]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def qc_flags(qc: dict, local_structure: float | None = None) -> list[str]:
    """Flags of a QC block (its own values; ``local_structure`` from :func:`local_structure_preservation`)."""
    flags = []
    sp = qc.get("StructurePreservation")
    if sp is None or not np.isfinite(sp):
        flags.append(FLAG_EMPTY)
    elif sp < STRUCTURE_THRESHOLD:
        flags.append(FLAG_STRUCTURE)
    if local_structure is not None and np.isfinite(local_structure) and local_structure < LOCAL_STRUCTURE_THRESHOLD:
        flags.append(FLAG_STRUCTURE_LOCAL)
    dice = qc.get("MaskDice")
    if dice is not None and np.isfinite(dice) and dice < MASK_DICE_THRESHOLD:
        flags.append(FLAG_MASK)
    w_in, w_out = qc.get("WassersteinInputToTarget"), qc.get("WassersteinOutputToTarget")
    if w_in is not None and w_out is not None and np.isfinite(w_in) and np.isfinite(w_out):
        if w_out > w_in + WASSERSTEIN_TOLERANCE:
            flags.append(FLAG_FARTHER)
    similarity = qc.get("TemplateSimilarity")
    if similarity is not None and np.isfinite(similarity) and similarity < TEMPLATE_SIMILARITY_THRESHOLD:
        flags.append(FLAG_NOT_A_BRAIN)
    return flags


def _rounded(values, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).ravel()]


def _json_float(value: float, digits: int = 6) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def image_qc(preproc, harmonized, mask, target_edges, target_density, *, voxel_size_mm=None,
             template=None) -> dict:
    """The ``QC`` block of the harmonized image's sidecar (keys of the output contract; ``MeanAbsoluteChange``
    is :func:`mean_absolute_change`; ``TemplateSimilarity`` is :func:`template_similarity`, present when
    ``template``, a ``(T1w, brain mask)`` pair of arrays on the same grid, is given).

    ``preproc``, ``harmonized``, ``mask``: arrays on one grid (``desc-preproc``, ``desc-harmonized``,
    ``desc-brain_mask``), or nibabel images (then ``voxel_size_mm`` comes from their header).
    ``target_edges``/``target_density``: histogram of the target style (any binning over [0, 1]; it is
    re-binned to :data:`HISTOGRAM_BINS` bins). Floats are rounded to 6 decimals; a value that cannot be
    computed is ``None`` (JSON null).
    """
    if voxel_size_mm is None and hasattr(preproc, "header"):
        voxel_size_mm = preproc.header.get_zooms()[:3]
    preproc, harmonized, mask = (
        np.asarray(image.dataobj if hasattr(image, "dataobj") else image) for image in (preproc, harmonized, mask)
    )
    brain = mask > 0
    edges, input_hist = brain_histogram(preproc, brain)
    _, output_hist = brain_histogram(harmonized, brain)
    target_hist = rebin_density(target_density, target_edges, edges)
    sp, block_scores, _ = structure_scores(preproc, harmonized, brain, voxel_size_mm=voxel_size_mm)
    qc = {
        "HistogramBins": _rounded(edges),
        "TargetHistogram": _rounded(target_hist),
        "InputHistogram": _rounded(input_hist),
        "OutputHistogram": _rounded(output_hist),
        "WassersteinInputToTarget": _json_float(wasserstein_1d(input_hist, target_hist, edges)),
        "WassersteinOutputToTarget": _json_float(wasserstein_1d(output_hist, target_hist, edges)),
        "StructurePreservation": _json_float(sp),
        "MaskDice": _json_float(mask_dice(brain, output_mask(harmonized, brain))),
        "MeanAbsoluteChange": _json_float(mean_absolute_change(preproc, harmonized, brain)),
    }
    if template is not None:
        qc["TemplateSimilarity"] = _json_float(template_similarity(preproc, *template))
    qc["Flags"] = qc_flags(
        {key: (math.nan if value is None else value) for key, value in qc.items() if not isinstance(value, list)},
        worst_block(block_scores),
    )
    return qc


def site_histogram(volumes: Iterable, masks: Iterable, bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Brain-intensity histogram of a site: the mean of the per-image densities (each image counts once,
    whatever its brain volume). ``volumes``/``masks``: iterables of arrays (consumed in step, so a
    generator reading one image at a time keeps memory flat). Raises ``ValueError`` when empty."""
    total = None
    count = 0
    edges = histogram_edges(bins)
    for volume, mask in zip(volumes, masks, strict=True):
        edges, density = brain_histogram(volume, mask, bins)
        total = density if total is None else total + density
        count += 1
    if count == 0:
        raise ValueError("site_histogram needs at least one image")
    return edges, total / count


def site_histograms(volumes, masks, sites) -> dict:
    """Per-site brain-intensity histogram on [0, 1] (the target style of the QC and reports), as a model
    bundle's manifest stores it: ``{site: {"edges": [...], "density": [...]}}`` rounded to 6 decimals."""
    out = {}
    for site in sorted(set(sites)):
        idx = [i for i, s in enumerate(sites) if s == site]
        edges, density = site_histogram([volumes[i] for i in idx], [masks[i] for i in idx])
        out[site] = {"edges": [round(float(e), 6) for e in edges], "density": [round(float(d), 6) for d in density]}
    return out


def feature_scale(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD of every column of ``features`` (an images x features array; SD 1 where a column does not
    vary): the fixed standardization under which a site classifier judges harmonized images in units of the
    unharmonized images' differences. A scaler fitted to histogram-calibrated outputs themselves blows their
    rounding-level differences (1e-5) up to unit variance, and the classifier then fits those."""
    X = np.asarray(features, dtype=np.float64)
    sd = X.std(axis=0)
    return X.mean(axis=0), np.where(sd > 0, sd, 1.0)


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Robust z-scores: ``(x - median) / (1.4826 * MAD)``; NaN stays NaN, zero MAD gives zeros."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full(values.shape, np.nan)
    median = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - median))
    if mad == 0:
        return np.where(np.isfinite(values), 0.0, np.nan)
    return (values - median) / mad
