from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.errors import BadDataError
from hcld_bids.interfaces.preproc import (
    CropToGrid,
    MaskToNative,
    RefineBrainMask,
    ScaleIntensity,
    ValidateT1w,
)
from hcld_bids.templates import check_templates


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def template_files():
    return check_templates("MNI152NLin6Asym", 2)


def test_validate_writes_the_ras_copy_into_the_working_directory(in_tmp, t1w_dir):
    result = ValidateT1w(in_file=str(t1w_dir / "uih_umr770_3T_run1_2mm.nii.gz")).run()
    out = Path(result.outputs.out_file)
    assert out.parent == in_tmp and out.is_file()
    assert nib.aff2axcodes(nib.load(out).affine) == ("R", "A", "S")


def test_validate_raises_bad_data_error_for_a_4d_file(in_tmp):
    path = in_tmp / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20, 3), np.int16), np.eye(4)), path)
    with pytest.raises(BadDataError, match="single 3D volume"):
        ValidateT1w(in_file=str(path)).run()


def test_refine_brain_mask_writes_a_uint8_mask_on_the_template_grid(in_tmp, template_files):
    template = nib.load(template_files["T1w"])
    result = RefineBrainMask(in_file=str(template_files["T1w"]),
                             template_mask_file=str(template_files["brain_mask"])).run()
    mask = nib.load(result.outputs.out_file)
    assert mask.get_data_dtype() == np.uint8 and mask.shape == template.shape
    reference = np.asarray(nib.load(template_files["brain_mask"]).dataobj) > 0
    refined = np.asarray(mask.dataobj) > 0
    # Refining the template's own mask on the template itself changes little.
    assert 2 * (refined & reference).sum() / (refined.sum() + reference.sum()) > 0.95


def test_refine_brain_mask_refuses_an_image_off_the_template_grid(in_tmp, template_files, t1w_dir):
    with pytest.raises(ValueError, match="not on the grid"):
        RefineBrainMask(in_file=str(t1w_dir / "uih_umr770_3T_run1_2mm.nii.gz"),
                        template_mask_file=str(template_files["brain_mask"])).run()


def test_scale_intensity_outputs_unit_range_image_and_reference_values(in_tmp, template_files):
    result = ScaleIntensity(in_file=str(template_files["T1w"]),
                            mask_file=str(template_files["brain_mask"])).run()
    scaled = np.asarray(nib.load(result.outputs.out_file).dataobj)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    data = np.asarray(nib.load(template_files["T1w"]).dataobj, dtype=float)
    inside = np.asarray(nib.load(template_files["brain_mask"]).dataobj) > 0
    assert result.outputs.low == pytest.approx(np.percentile(data[inside], 0.5))
    assert result.outputs.high == pytest.approx(np.percentile(data[inside], 99.5))


def test_scale_intensity_names_the_source_file_when_the_brain_is_flat(in_tmp, template_files):
    flat = in_tmp / "flat.nii.gz"
    ref = nib.load(template_files["T1w"])
    nib.save(nib.Nifti1Image(np.ones(ref.shape, np.float32), ref.affine), flat)
    with pytest.raises(BadDataError, match="sub-01_T1w.nii.gz: cannot scale"):
        ScaleIntensity(in_file=str(flat), mask_file=str(template_files["brain_mask"]),
                       source_file="sub-01_T1w.nii.gz").run()


def test_crop_to_grid_writes_brain_only_model_input_and_mask(in_tmp, template_files):
    result = CropToGrid(in_file=str(template_files["T1w"]), mask_file=str(template_files["brain_mask"]),
                        grid_shape=(80, 96, 80), grid_start=(6, 8, 0)).run()
    image = nib.load(result.outputs.out_file)
    mask = nib.load(result.outputs.out_mask)
    assert image.shape == mask.shape == (80, 96, 80)
    data, inside = np.asarray(image.dataobj), np.asarray(mask.dataobj) > 0
    assert not data[~inside].any() and (data[inside] > 0).mean() > 0.99
    template = nib.load(template_files["T1w"])
    np.testing.assert_allclose(image.affine @ [0, 0, 0, 1], template.affine @ [6, 8, 0, 1])
    np.testing.assert_allclose(image.header.get_qform(), image.affine)


def test_mask_to_native_with_identity_transform_keeps_the_mask(in_tmp, template_files):
    import ants

    identity = in_tmp / "identity.mat"
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3), str(identity))
    result = MaskToNative(mask_file=str(template_files["brain_mask"]), transform=str(identity),
                          reference_file=str(template_files["T1w"])).run()
    out = np.asarray(nib.load(result.outputs.out_file).dataobj) > 0
    np.testing.assert_array_equal(out, np.asarray(nib.load(template_files["brain_mask"]).dataobj) > 0)


@pytest.mark.parametrize("iterations, expected", [(None, [50, 50, 50, 50]), ([10, 10, 10, 10], [10, 10, 10, 10])])
def test_n4_interface_passes_its_iterations_to_ants(in_tmp, t1w_dir, monkeypatch, iterations, expected):
    import ants

    from hcld_bids.interfaces.preproc import N4BiasCorrection

    seen = []
    real = ants.n4_bias_field_correction
    monkeypatch.setattr(ants, "n4_bias_field_correction",
                        lambda image, **kw: seen.append(kw["convergence"]["iters"]) or real(image, **kw))
    node = N4BiasCorrection(in_file=str(t1w_dir / "uih_umr770_3T_run1_2mm.nii.gz"), num_threads=1)
    if iterations is not None:
        node.inputs.iterations = iterations
    out = Path(node.run().outputs.out_file)
    assert seen == [expected]
    assert nib.load(out).shape == nib.load(t1w_dir / "uih_umr770_3T_run1_2mm.nii.gz").shape
