import numpy as np
import pytest

from hcld_bids.preproc.intensity import scale_intensity, scaling_reference, unscale_intensity


def _brain():
    image = np.zeros((20, 20, 20), np.float32)
    mask = np.zeros(image.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    image[mask] = np.linspace(100, 1099, mask.sum())
    image[0, 0, 0] = 1e6  # hot voxel outside the brain
    return image, mask


def test_scaling_reference_is_the_brain_percentiles():
    image, mask = _brain()
    low, high = scaling_reference(image, mask)
    assert low == pytest.approx(np.percentile(image[mask], 0.5))
    assert high == pytest.approx(np.percentile(image[mask], 99.5))


def test_scale_intensity_maps_reference_values_to_0_and_1_and_clips():
    image, mask = _brain()
    low, high = scaling_reference(image, mask)
    scaled = scale_intensity(image, low, high)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert scaled[0, 0, 0] == 1.0  # hot voxel clipped
    inside = (image >= low) & (image <= high)
    np.testing.assert_allclose(scaled[inside], (image[inside] - low) / (high - low), atol=1e-6)


def test_unscale_intensity_undoes_scaling_of_unclipped_voxels():
    image, mask = _brain()
    low, high = scaling_reference(image, mask)
    restored = unscale_intensity(scale_intensity(image, low, high), low, high)
    inside = (image >= low) & (image <= high)
    np.testing.assert_allclose(restored[inside], image[inside], rtol=1e-5)


def test_scaling_reference_rejects_empty_mask_and_flat_brain():
    image, mask = _brain()
    with pytest.raises(ValueError, match="empty"):
        scaling_reference(image, np.zeros_like(mask))
    with pytest.raises(ValueError, match="contrast"):
        scaling_reference(np.ones_like(image), mask)
