import gzip

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.errors import BadDataError, MissingInputError
from hcld_bids.preproc.validate import load_t1w


def _save(tmp_path, data, affine=None, name="t1w.nii.gz"):
    affine = np.diag([-2.0, 2.0, 2.0, 1.0]) if affine is None else affine  # LAS storage
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _head(shape=(40, 48, 40)):
    data = np.zeros(shape, np.int16)
    data[8:-8, 8:-8, 8:-8] = 500
    data[10, 20, 20] = 900  # asymmetric marker
    return data


def _bad_message(path):
    with pytest.raises(BadDataError) as info:
        load_t1w(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert info.value.exit_code == 65
    return message


def test_load_t1w_returns_ras_image_with_the_same_voxels(tmp_path):
    data = _head()
    img = load_t1w(_save(tmp_path, data))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.shape == data.shape and img.get_data_dtype() == np.int16
    # The x axis was flipped: the marker at x=10 of 40 is now at x=29.
    assert np.asarray(img.dataobj)[29, 20, 20] == 900
    np.testing.assert_allclose(img.affine @ [29, 20, 20, 1], np.diag([-2.0, 2.0, 2.0, 1.0]) @ [10, 20, 20, 1])


def test_load_t1w_drops_a_trailing_singleton_fourth_dimension(tmp_path):
    img = load_t1w(_save(tmp_path, _head()[..., None]))
    assert img.shape == (40, 48, 40)


def test_load_t1w_rejects_a_time_series(tmp_path):
    assert "single 3D volume" in _bad_message(_save(tmp_path, np.stack([_head()] * 2, axis=-1)))


def test_load_t1w_rejects_nan(tmp_path):
    data = _head().astype(np.float32)
    data[20, 20, 20] = np.nan
    assert "NaN" in _bad_message(_save(tmp_path, data))


def test_load_t1w_rejects_an_empty_image(tmp_path):
    assert "empty" in _bad_message(_save(tmp_path, np.zeros((40, 40, 40), np.int16)))


def test_load_t1w_rejects_implausible_voxel_sizes(tmp_path):
    assert "voxel sizes" in _bad_message(_save(tmp_path, _head(), np.diag([10.0, 10.0, 10.0, 1.0])))


def test_load_t1w_rejects_a_degenerate_affine(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 2] = affine[:3, 1]  # two identical axes
    assert "degenerate" in _bad_message(_save(tmp_path, _head(), affine))


def test_load_t1w_rejects_a_truncated_gzip(tmp_path):
    path = _save(tmp_path, np.random.default_rng(0).integers(0, 1000, (40, 48, 40)).astype(np.int16))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    assert "truncated" in _bad_message(path)


def test_load_t1w_rejects_a_corrupt_gzip_stream(tmp_path):
    path = _save(tmp_path, np.random.default_rng(0).integers(0, 1000, (40, 48, 40)).astype(np.int16))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert "corrupt" in _bad_message(path)


def test_load_t1w_rejects_a_file_that_is_not_nifti(tmp_path):
    path = tmp_path / "t1w.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"this is not an image" * 50)
    assert "NIfTI" in _bad_message(path)


def test_load_t1w_reports_a_missing_file_as_missing_input(tmp_path):
    with pytest.raises(MissingInputError) as info:
        load_t1w(tmp_path / "nope.nii.gz")
    assert info.value.exit_code == 66


def test_load_t1w_accepts_the_vendored_real_scans(t1w_dir):
    for path in sorted(t1w_dir.glob("*.nii.gz")):
        img = load_t1w(path)
        assert img.ndim == 3 and nib.aff2axcodes(img.affine) == ("R", "A", "S")
