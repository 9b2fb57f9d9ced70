import nibabel as nib
import numpy as np
import pytest

from hcld_bids.preproc.bias import BRAIN_SHRINK_MM, BRAIN_SPLINE_DISTANCE_MM, head_mask, n4_correct
from hcld_bids.preproc.validate import load_t1w


@pytest.fixture(scope="module")
def scan(t1w_dir):
    return load_t1w(t1w_dir / "siemens_prismafit3T_xa30_s6_norm.nii.gz")


def test_head_mask_covers_a_head_sized_region(scan):
    mask = head_mask(np.asarray(scan.dataobj))
    litres = mask.sum() * 27 / 1e6
    assert 2.5 < litres < 7.0
    assert not mask[0, 0, 0] and mask[tuple(s // 2 for s in mask.shape)]


@pytest.mark.slow
def test_n4_in_a_brain_mask_removes_most_of_an_imposed_smooth_bias(scan):
    data = np.asarray(scan.dataobj, dtype=np.float32)
    x = np.linspace(-1, 1, data.shape[0])[:, None, None]
    field = np.exp(0.4 * x)  # 2.2x brighter on the right than on the left
    biased = nib.Nifti1Image(data * field, scan.affine)
    brain = head_mask(data) & (data > np.percentile(data, 70))

    out = n4_correct(biased, mask=brain, shrink_mm=BRAIN_SHRINK_MM, spline_distance_mm=BRAIN_SPLINE_DISTANCE_MM)
    corrected = np.asarray(out.dataobj, dtype=np.float64)
    assert out.shape == scan.shape and out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, scan.affine)

    def left_right_slope(volume):
        # log-intensity trend along x inside the bright tissue (0 when there is no x bias)
        values = np.log(volume[brain] / np.maximum(data[brain], 1))
        xs = np.broadcast_to(x, data.shape)[brain]
        return np.polyfit(xs, values, 1)[0]

    assert left_right_slope(data * field) == pytest.approx(0.4, abs=0.01)
    assert abs(left_right_slope(corrected)) < 0.1  # measured: 0.04
