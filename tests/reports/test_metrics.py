"""Histogram distances and the anatomy-preservation guard on real scans resampled to the 2 mm grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from hcld_bids.reports import metrics
from hcld_bids.reports.synthetic import fake_harmonize, resample_scan


@pytest.fixture(scope="module")
def head(scans_dir):
    """A real UIH scan on the 2 mm template grid: (preproc in [0, 1], brain mask)."""
    return resample_scan(scans_dir / "uih_umr770_3T_run1_2mm.nii.gz")


@pytest.fixture(scope="module")
def other_head(scans_dir):
    return resample_scan(scans_dir / "siemens_prismafit3T_xa30_s6_norm.nii.gz")


def _noisy(volume, sd, seed=0):
    return np.clip(volume + np.random.default_rng(seed).normal(0, sd, volume.shape), 0, 1).astype(np.float32)


def test_brain_histogram_is_a_density_over_0_1_with_65_edges(head):
    preproc, mask = head
    edges, density = metrics.brain_histogram(preproc, mask)
    assert edges.shape == (65,) and density.shape == (64,)
    assert edges[0] == 0 and edges[-1] == 1
    assert np.sum(density * np.diff(edges)) == pytest.approx(1.0)


def test_brain_histogram_counts_out_of_range_values_in_the_end_bins():
    image = np.array([-0.5, 0.0, 0.5, 1.0, 2.0]).reshape(5, 1, 1)
    edges, density = metrics.brain_histogram(image, np.ones_like(image), bins=4)
    np.testing.assert_allclose(density * np.diff(edges), [0.4, 0.0, 0.2, 0.4])


def test_brain_histogram_of_an_empty_mask_is_zero(head):
    _, density = metrics.brain_histogram(head[0], np.zeros_like(head[1]))
    assert not density.any()


def test_wasserstein_1d_is_zero_for_equal_and_the_shift_for_moved_histograms():
    edges = metrics.histogram_edges(10)
    a = np.zeros(10)
    a[2] = 10.0
    b = np.zeros(10)
    b[5] = 10.0
    assert metrics.wasserstein_1d(a, a, edges) == 0
    assert metrics.wasserstein_1d(a, b, edges) == pytest.approx(0.3)
    assert metrics.wasserstein_1d(b, a, edges) == pytest.approx(0.3)


def test_wasserstein_1d_of_histograms_approximates_the_distance_of_the_samples():
    rng = np.random.default_rng(1)
    x, y = rng.beta(2, 5, 50_000), rng.beta(5, 2, 50_000)
    edges, hx = metrics.brain_histogram(x.reshape(-1, 1, 1), np.ones((x.size, 1, 1)))
    _, hy = metrics.brain_histogram(y.reshape(-1, 1, 1), np.ones((y.size, 1, 1)))
    exact = metrics.wasserstein_samples(x, y)
    assert metrics.wasserstein_1d(hx, hy, edges) == pytest.approx(exact, abs=0.005)


def test_wasserstein_1d_of_an_empty_histogram_is_nan():
    edges = metrics.histogram_edges(4)
    assert np.isnan(metrics.wasserstein_1d(np.zeros(4), np.ones(4), edges))


def test_rebin_density_keeps_the_mass_and_its_position():
    edges = metrics.histogram_edges(8)
    density = np.array([0, 0, 8, 0, 0, 0, 0, 0], dtype=float)
    new_edges = metrics.histogram_edges(4)
    rebinned = metrics.rebin_density(density, edges, new_edges)
    np.testing.assert_allclose(rebinned * np.diff(new_edges), [0, 1, 0, 0])


def test_structure_preservation_is_one_for_a_linear_remapping(head):
    preproc, mask = head
    assert metrics.structure_preservation(preproc, (0.2 + 0.5 * preproc) * mask, mask) == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("curve", ["gamma 0.4", "gamma 2.5", "sigmoid"])
def test_structure_preservation_stays_near_one_for_nonlinear_monotone_remappings(head, curve):
    preproc, mask = head
    remapped = {
        "gamma 0.4": preproc**0.4,
        "gamma 2.5": preproc**2.5,
        "sigmoid": 1 / (1 + np.exp(-(preproc - 0.5) * 10)),
    }[curve]
    assert metrics.structure_preservation(preproc, remapped * mask, mask) > 0.98


def test_monotone_contrast_change_with_noise_and_blur_does_not_trip_the_guard(head):
    preproc, mask = head
    output = _noisy(ndi.gaussian_filter(preproc**0.6, 0.8), 0.03) * mask
    sp, blocks, _ = metrics.structure_scores(preproc, output, mask)
    assert sp > metrics.STRUCTURE_THRESHOLD
    assert metrics.worst_block(blocks) > metrics.LOCAL_STRUCTURE_THRESHOLD


def test_the_fixture_stand_in_harmonizer_passes_the_guard(head, other_head):
    preproc, mask = head
    reference = other_head[0][other_head[1] > 0]
    output = fake_harmonize(preproc, mask, reference)
    assert metrics.structure_preservation(preproc, output, mask) > metrics.STRUCTURE_THRESHOLD


@pytest.mark.parametrize("voxels", [2, 3])
def test_a_shifted_brain_trips_the_guard(head, voxels):
    preproc, mask = head
    shifted = ndi.shift(preproc, (0, voxels, 0), order=1) * mask
    assert metrics.structure_preservation(preproc, shifted, mask) < metrics.STRUCTURE_THRESHOLD


def test_blurred_away_detail_trips_the_guard(head):
    preproc, mask = head
    blurred = ndi.gaussian_filter(preproc, 2.5) * mask
    assert metrics.structure_preservation(preproc, blurred, mask) < metrics.STRUCTURE_THRESHOLD


def test_a_strong_warp_trips_the_guard(head):
    preproc, mask = head
    rng = np.random.default_rng(3)
    fields = [ndi.gaussian_filter(rng.standard_normal(preproc.shape), 6) for _ in range(3)]
    fields = [f / np.abs(f).max() * 4.0 for f in fields]  # up to 8 mm
    grid = np.indices(preproc.shape, dtype=np.float32)
    warped = ndi.map_coordinates(preproc, [g + f for g, f in zip(grid, fields)], order=1) * mask
    assert metrics.structure_preservation(preproc, warped, mask) < metrics.STRUCTURE_THRESHOLD


def test_another_head_scores_far_below_the_threshold(head, other_head):
    preproc, mask = head
    assert metrics.structure_preservation(preproc, other_head[0] * mask, mask) < 0.8


def test_an_erased_structure_trips_the_local_guard_only(head):
    preproc, mask = head
    erased = fake_harmonize(preproc, mask, preproc[mask > 0], damage="erase")
    sp, blocks, block = metrics.structure_scores(preproc, erased, mask)
    assert sp > metrics.STRUCTURE_THRESHOLD  # the whole-brain score averages a 16 mm change away
    assert metrics.worst_block(blocks) < metrics.LOCAL_STRUCTURE_THRESHOLD
    assert block == 12  # 24 mm at 2 mm


def test_structure_scores_follow_the_voxel_size():
    volume = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)
    mask = np.ones_like(volume)
    _, blocks, block = metrics.structure_scores(volume, volume, mask, voxel_size_mm=1.0)
    assert block == 24 and blocks.shape == (2, 2, 2)


def test_structure_preservation_of_an_empty_output_is_nan(head):
    preproc, mask = head
    assert np.isnan(metrics.structure_preservation(preproc, np.zeros_like(preproc), mask))


def test_structure_preservation_rejects_different_shapes(head):
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.structure_preservation(head[0], head[0][:-1], head[1])


def test_mask_dice_counts_the_overlap():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert metrics.mask_dice(a, b) == pytest.approx(0.5)
    assert metrics.mask_dice(a, a) == 1.0
    assert metrics.mask_dice(np.zeros(3), np.zeros(3)) == 1.0


def test_output_mask_of_a_complete_output_matches_the_input_mask(head):
    preproc, mask = head
    output = fake_harmonize(preproc, mask, preproc[mask > 0])
    assert metrics.mask_dice(mask, metrics.output_mask(output, mask)) > metrics.MASK_DICE_THRESHOLD


def test_output_mask_reveals_a_cut_off_part_of_the_brain(head):
    preproc, mask = head
    output = fake_harmonize(preproc, mask, preproc[mask > 0])
    top = np.nonzero(mask.any(axis=(0, 1)))[0].max()
    output[:, :, top - 12:] = 0  # top 24 mm missing
    assert metrics.mask_dice(mask, metrics.output_mask(output, mask)) < metrics.MASK_DICE_THRESHOLD


QC_KEYS = [
    "HistogramBins", "TargetHistogram", "InputHistogram", "OutputHistogram", "WassersteinInputToTarget",
    "WassersteinOutputToTarget", "StructurePreservation", "MaskDice", "MeanAbsoluteChange", "Flags",
]


def test_image_qc_returns_the_contract_block(head, other_head):
    preproc, mask = head
    target = metrics.brain_histogram(*other_head)
    output = fake_harmonize(preproc, mask, other_head[0][other_head[1] > 0])
    qc = metrics.image_qc(preproc, output, mask, *target)
    assert list(qc) == QC_KEYS
    assert len(qc["HistogramBins"]) == 65 and all(len(qc[k]) == 64 for k in QC_KEYS[1:4])
    assert qc["WassersteinOutputToTarget"] < 0.5 * qc["WassersteinInputToTarget"]
    assert qc["StructurePreservation"] > metrics.STRUCTURE_THRESHOLD
    assert qc["MaskDice"] > metrics.MASK_DICE_THRESHOLD
    brain = mask > 0
    assert qc["MeanAbsoluteChange"] == pytest.approx(float(abs(output[brain] - preproc[brain]).mean()), abs=1e-6)
    assert metrics.image_qc(preproc, preproc * brain, mask, *target)["MeanAbsoluteChange"] == 0.0
    assert qc["Flags"] == []
    import json

    assert json.loads(json.dumps(qc)) == qc  # plain JSON types only


def test_image_qc_flags_a_damaged_output(head, other_head):
    preproc, mask = head
    target = metrics.brain_histogram(*other_head)
    shifted = fake_harmonize(preproc, mask, other_head[0][other_head[1] > 0], damage="shift")
    assert metrics.FLAG_STRUCTURE in metrics.image_qc(preproc, shifted, mask, *target)["Flags"]
    erased = fake_harmonize(preproc, mask, other_head[0][other_head[1] > 0], damage="erase")
    assert metrics.image_qc(preproc, erased, mask, *target)["Flags"] == [metrics.FLAG_STRUCTURE_LOCAL]


def test_image_qc_flags_an_output_farther_from_the_target_than_its_input(head, other_head):
    preproc, mask = head
    target = metrics.brain_histogram(preproc, mask)  # the input already has the target style
    output = fake_harmonize(preproc, mask, other_head[0][other_head[1] > 0])
    assert metrics.FLAG_FARTHER in metrics.image_qc(preproc, output, mask, *target)["Flags"]


def test_image_qc_of_an_empty_output_says_so(head):
    preproc, mask = head
    qc = metrics.image_qc(preproc, np.zeros_like(preproc), mask, *metrics.brain_histogram(preproc, mask))
    assert qc["StructurePreservation"] is None
    assert metrics.FLAG_EMPTY in qc["Flags"] and metrics.FLAG_MASK in qc["Flags"]


def test_image_qc_reads_voxel_size_from_nibabel_images(head):
    import nibabel as nib

    preproc, mask = head
    images = [nib.Nifti1Image(v, np.diag([2.0, 2.0, 2.0, 1.0])) for v in (preproc, preproc * mask, mask)]
    qc = metrics.image_qc(*images, *metrics.brain_histogram(preproc, mask))
    assert qc["StructurePreservation"] == pytest.approx(1.0)


def test_site_histogram_averages_the_image_densities(head, other_head):
    edges, mean = metrics.site_histogram(iter([head[0], other_head[0]]), iter([head[1], other_head[1]]))
    expected = (metrics.brain_histogram(*head)[1] + metrics.brain_histogram(*other_head)[1]) / 2
    np.testing.assert_allclose(mean, expected)
    with pytest.raises(ValueError, match="at least one"):
        metrics.site_histogram([], [])


def test_robust_z_scores_an_outlier_and_ignores_nan():
    z = metrics.robust_z([1.0, 1.1, 0.9, 1.0, 5.0, np.nan])
    assert z[4] > 10 and abs(z[0]) < 1 and np.isnan(z[5])


@pytest.fixture(scope="module")
def template_pair(templateflow_home):
    import nibabel as nib

    from hcld_bids.templates import template_files

    files = template_files("MNI152NLin6Asym", 2)
    return tuple(np.asarray(nib.as_closest_canonical(nib.load(files[k])).dataobj, np.float32)
                 for k in ("T1w", "brain_mask"))


def test_template_similarity_tells_a_brain_from_noise_and_flags_what_is_not_one(head, other_head, template_pair):
    """A brain where the template has one scores high whatever its contrast, noise and blur; noise and the
    image's own intensities shuffled (no anatomy) score near zero and are flagged."""
    _, mask = head
    t1w, brain = template_pair
    rng = np.random.default_rng(0)
    # a brain where the template has one, in another scanner's contrast, noise and blur
    scaled = np.clip(t1w / np.percentile(t1w[brain > 0], 99.5), 0, 1)
    preproc = np.clip(ndi.gaussian_filter(scaled ** 1.6, 0.8) + rng.normal(0, 0.06, t1w.shape), 0, 1)
    preproc = (preproc * (brain > 0)).astype(np.float32)
    assert metrics.template_similarity(preproc, *template_pair) > 2 * metrics.TEMPLATE_SIMILARITY_THRESHOLD
    noise = (rng.random(preproc.shape) * (brain > 0)).astype(np.float32)  # noise inside the brain mask
    assert abs(metrics.template_similarity(noise, *template_pair)) < metrics.TEMPLATE_SIMILARITY_THRESHOLD
    shuffled = preproc.copy()
    shuffled[brain > 0] = rng.permutation(preproc[brain > 0])  # the input's own intensities, no anatomy
    assert metrics.template_similarity(shuffled, *template_pair) < metrics.TEMPLATE_SIMILARITY_THRESHOLD
    assert np.isnan(metrics.template_similarity(np.zeros_like(preproc), *template_pair))

    target = metrics.brain_histogram(*other_head)
    good = metrics.image_qc(preproc, preproc, brain, *target, template=template_pair)
    assert good["TemplateSimilarity"] > metrics.TEMPLATE_SIMILARITY_THRESHOLD and good["Flags"] == []
    bad = metrics.image_qc(shuffled, shuffled, mask, *target, template=template_pair)
    assert metrics.FLAG_NOT_A_BRAIN in bad["Flags"]
    assert "TemplateSimilarity" not in metrics.image_qc(preproc, preproc, brain, *target)  # no template given
