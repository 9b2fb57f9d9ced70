import nibabel as nib
import numpy as np
import pytest

from hcld_bids.preproc.registration import (
    apply_transform,
    mask_to_native,
    register_to_template,
    to_native,
)
from hcld_bids.templates import check_templates

pytestmark = pytest.mark.slow  # real ANTs registrations, ~5-10 s each


@pytest.fixture(scope="module")
def template():
    files = check_templates("MNI152NLin6Asym", 2)
    return nib.load(files["T1w"]), nib.load(files["brain_mask"])


@pytest.fixture(scope="module")
def shifted_registration(template, tmp_path_factory):
    """The template itself, placed 8 mm to the left, 6 mm up and rotated 5 degrees: a moving image
    whose true transform is known."""
    t1w, _ = template
    angle = np.deg2rad(5)
    motion = np.eye(4)
    motion[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    motion[:3, 3] = [-8, 0, 6]
    moving = nib.Nifti1Image(np.asarray(t1w.dataobj, dtype=np.float32), motion @ t1w.affine)
    out = tmp_path_factory.mktemp("reg")
    return moving, motion, register_to_template(moving, t1w, out)


@pytest.fixture
def ants_calls(monkeypatch):
    """The keyword arguments of every ``ants.registration`` call made during the test (the real one runs)."""
    import ants

    calls = []
    real = ants.registration
    monkeypatch.setattr(ants, "registration", lambda **kw: calls.append(kw) or real(**kw))
    return calls


def _correlation_with_template(result, template) -> float:
    t1w, mask = template
    inside = np.asarray(mask.dataobj) > 0
    warped = np.asarray(result.warped.dataobj, dtype=float)
    return np.corrcoef(warped[inside], np.asarray(t1w.dataobj, dtype=float)[inside])[0, 1]


def test_affine_registration_recovers_a_known_rigid_motion(template, shifted_registration):
    t1w, _ = template
    _, _, result = shifted_registration
    assert result.warped.shape == t1w.shape
    assert _correlation_with_template(result, template) > 0.98


def test_registration_writes_forward_and_inverse_affine_mat_files(shifted_registration):
    _, _, result = shifted_registration
    assert result.forward.suffix == ".mat" and result.forward.is_file()
    assert result.inverse.suffix == ".mat" and result.inverse.is_file()
    assert not list(result.forward.parent.glob(".ants_*"))  # scratch directory removed


def test_to_native_puts_the_template_mask_where_the_brain_moved(template, shifted_registration):
    t1w, mask = template
    moving, motion, result = shifted_registration
    native = mask_to_native(mask, result.inverse, moving)
    # The moving image stores the template's voxels unchanged, so the true native mask is the
    # template mask array itself.
    truth = np.asarray(mask.dataobj) > 0
    assert 2 * (native & truth).sum() / (native.sum() + truth.sum()) > 0.95
    image = to_native(t1w, result.inverse, moving)
    assert image.shape == moving.shape
    np.testing.assert_allclose(image.affine, moving.affine)


def test_forward_then_inverse_transform_returns_to_the_native_grid(template, shifted_registration):
    t1w, mask = template
    moving, _, result = shifted_registration
    there = apply_transform(moving, t1w, result.forward)
    back = apply_transform(there, moving, result.inverse)
    original = np.asarray(moving.dataobj, dtype=float)
    inside = np.asarray(mask.dataobj) > 0
    assert np.corrcoef(np.asarray(back.dataobj)[inside], original[inside])[0, 1] > 0.97


def test_unknown_registration_is_refused(template, tmp_path):
    t1w, _ = template
    with pytest.raises(ValueError, match="unknown registration"):
        register_to_template(t1w, t1w, tmp_path, registration="bspline")


def test_sloppy_registration_is_the_fast_recipe_and_still_recovers_the_motion(template, shifted_registration,
                                                                               tmp_path, ants_calls):
    t1w, _ = template
    moving, _, _ = shifted_registration
    result = register_to_template(moving, t1w, tmp_path, sloppy=True)
    assert [c["type_of_transform"] for c in ants_calls] == ["AffineFast"]
    assert _correlation_with_template(result, template) > 0.9
    assert result.forward.suffix == ".mat" and result.inverse.is_file()


def test_affine_registration_refines_the_quick_recipe_at_full_resolution(template, shifted_registration,
                                                                         tmp_path, ants_calls):
    from hcld_bids.preproc.registration import AFFINE_REFINEMENT

    t1w, _ = template
    moving, _, _ = shifted_registration
    result = register_to_template(moving, t1w, tmp_path)
    assert [c["type_of_transform"] for c in ants_calls] == ["antsRegistrationSyNQuick[a]", "Affine"]
    refine = ants_calls[1]
    assert refine["aff_shrink_factors"][-1] == 1 and refine["aff_smoothing_sigmas"][-1] == 0
    assert {k: refine[k] for k in AFFINE_REFINEMENT} == AFFINE_REFINEMENT
    # it starts from the quick transform, and the file written is the composed one: the motion is recovered
    assert str(refine["initial_transform"]).endswith("GenericAffine.mat")
    assert _correlation_with_template(result, template) > 0.98
    assert result.forward.is_file() and result.inverse.is_file()
    assert not list(tmp_path.glob(".ants_*"))

