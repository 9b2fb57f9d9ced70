import numpy as np

from hcld_bids.preproc.brainmask import largest_component, refine_brain_mask


def _ball(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def _phantom():
    """A bright 'brain' of radius 14 with a dark 'ventricle', dark CSF/bone shell, bright scalp."""
    shape = (48, 48, 48)
    centre = (24, 24, 24)
    image = np.full(shape, 5.0)                       # background
    image[_ball(shape, centre, 21)] = 300.0           # scalp (as bright as tissue)
    image[_ball(shape, centre, 19)] = 40.0            # bone + CSF
    image[_ball(shape, centre, 14)] = 200.0           # brain tissue
    image[_ball(shape, centre, 4)] = 30.0             # ventricle (CSF inside the brain)
    return image, shape, centre


def test_refined_mask_moves_the_outline_to_the_subject_brain():
    image, shape, centre = _phantom()
    template = _ball(shape, centre, 12)               # template brain smaller than the subject's
    mask = refine_brain_mask(image, template, voxel_size_mm=1.0, band_mm=3.0)
    brain = _ball(shape, centre, 14)
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.97
    assert mask[_ball(shape, centre, 4)].all()        # ventricle kept
    assert not mask[~_ball(shape, centre, 15)].any()  # no scalp


def test_refined_mask_drops_dark_csf_inside_the_template_outline():
    image, shape, centre = _phantom()
    template = _ball(shape, centre, 18)               # template too large: reaches into the CSF
    mask = refine_brain_mask(image, template, voxel_size_mm=1.0, band_mm=4.0)
    csf_shell = _ball(shape, centre, 18) & ~_ball(shape, centre, 15)
    # A few corner voxels come back with the closing (its structuring element is not a ball).
    assert mask[csf_shell].mean() < 0.01


def test_refined_mask_excludes_fat_brighter_than_the_brain():
    image, shape, centre = _phantom()
    fat = _ball(shape, centre, 16) & ~_ball(shape, centre, 14) & (np.indices(shape)[0] > 30)
    image[fat] = 1000.0                               # marrow/fat touching the brain
    mask = refine_brain_mask(image, _ball(shape, centre, 14), voxel_size_mm=1.0, band_mm=3.0)
    assert not mask[fat].any()


def test_largest_component_keeps_only_the_biggest_blob():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:8, 2:8, 2:8] = True
    mask[12:14, 12:14, 12:14] = True
    kept = largest_component(mask)
    assert kept.sum() == 216 and not kept[12:14, 12:14, 12:14].any()


def test_distance_based_morphology_equals_ball_structuring_elements():
    from scipy import ndimage as ndi

    from hcld_bids.preproc.brainmask import closing, dilate, erode

    rng = np.random.default_rng(1)
    mask = ndi.binary_opening(rng.random((30, 30, 30)) > 0.4)
    grid = np.indices((7, 7, 7)) - 3
    ball3 = (grid ** 2).sum(axis=0) <= 9
    np.testing.assert_array_equal(dilate(mask, 3.0), ndi.binary_dilation(mask, ball3))
    np.testing.assert_array_equal(erode(mask, 3.0), ndi.binary_erosion(mask, ball3))
    padded = np.pad(mask, 4)
    expected = ndi.binary_erosion(ndi.binary_dilation(padded, ball3), ball3)[4:-4, 4:-4, 4:-4]
    np.testing.assert_array_equal(closing(mask, 3.0), expected)


def test_the_template_band_is_computed_once_and_the_mask_is_the_same(monkeypatch):
    """The template's dilated and eroded masks are the same for every image: computed once per process."""
    from hcld_bids.preproc import brainmask

    image, shape, centre = _phantom()
    template = _ball(shape, centre, 12)
    brainmask._TEMPLATE_BANDS.clear()
    first = refine_brain_mask(image, template, voxel_size_mm=2.0)
    calls = []
    monkeypatch.setattr(brainmask, "dilate", lambda *a: calls.append(a) or brainmask.ndi.distance_transform_edt(
        ~a[0], sampling=a[2]) <= a[1])
    second = refine_brain_mask(image * 1.1, template, voxel_size_mm=2.0)
    assert len(calls) == 2  # the closing's two dilations; the template's band came from the cache
    assert np.array_equal(first, refine_brain_mask(image, template, voxel_size_mm=2.0))
    assert second.shape == first.shape
    dilated, core = next(iter(brainmask._TEMPLATE_BANDS.values()))
    assert not dilated.flags.writeable and not core.flags.writeable
    brainmask._TEMPLATE_BANDS.clear()
    assert np.array_equal(first, refine_brain_mask(image, template, voxel_size_mm=2.0))
