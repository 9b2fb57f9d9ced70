import nibabel as nib
import numpy as np
import pytest

from hcld_bids.preproc.grid import (
    KNOWN_GRIDS,
    GridSpec,
    crop_to_grid,
    grid_affine,
    grid_from_mask,
    grid_shape,
    model_grid,
    uncrop_from_grid,
)
from hcld_bids.templates import check_templates


def test_gridspec_rejects_sides_not_divisible_by_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        GridSpec(shape=(80, 96, 81), start=(0, 0, 0))


def test_gridspec_round_trips_through_a_dict():
    grid = GridSpec(shape=(80, 96, 80), start=(6, -2, 0))
    assert GridSpec.from_dict(grid.to_dict()) == grid


def test_grid_shape_covers_the_same_field_of_view_at_2mm_and_1mm():
    assert grid_shape(2.0) == (80, 96, 80)
    assert grid_shape((1.0, 1.0, 1.0)) == (160, 192, 160)


def test_grid_shape_rejects_voxel_sizes_without_a_16_multiple():
    with pytest.raises(ValueError, match="multiples of 16"):
        grid_shape(3.0)


def test_grid_from_mask_centres_the_window_on_the_mask_bounding_box():
    mask = np.zeros((60, 60, 60), bool)
    mask[20:40, 10:30, 25:35] = True  # centre (30, 20, 30)
    grid = grid_from_mask(mask, (32, 32, 16))
    assert grid.start == (14, 4, 22)


def test_grid_from_mask_clips_the_window_inside_the_template_grid():
    mask = np.zeros((40, 40, 40), bool)
    mask[0:10, 30:40, 15:25] = True
    grid = grid_from_mask(mask, (32, 32, 32))
    assert grid.start == (0, 8, 4)


def test_grid_from_mask_pads_when_the_window_exceeds_the_template_grid():
    mask = np.zeros((20, 40, 40), bool)
    mask[5:15, 10:30, 10:30] = True
    grid = grid_from_mask(mask, (32, 32, 32))
    assert grid.start[0] == -6  # 6 voxels of padding on either side


def test_known_2mm_grid_is_what_the_rule_gives_on_the_shipped_mask():
    mask = nib.load(check_templates("MNI152NLin6Asym", 2)["brain_mask"])
    computed = grid_from_mask(np.asarray(mask.dataobj), grid_shape(mask.header.get_zooms()[:3]))
    assert computed == KNOWN_GRIDS[("MNI152NLin6Asym", 2)]
    assert model_grid("MNI152NLin6Asym", 2) == computed


def test_model_grid_of_an_unknown_template_comes_from_its_mask(templateflow_home):
    tpl_dir = templateflow_home / "tpl-TestTpl"
    tpl_dir.mkdir()
    try:
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        mask = np.zeros((100, 100, 100), np.uint8)
        mask[30:70, 20:80, 40:60] = 1
        nib.save(nib.Nifti1Image(mask, affine), tpl_dir / "tpl-TestTpl_res-02_desc-brain_mask.nii.gz")
        nib.save(nib.Nifti1Image(mask.astype(np.float32), affine), tpl_dir / "tpl-TestTpl_res-02_T1w.nii.gz")
        (tpl_dir / "template_description.json").write_text('{"Identifier": "TestTpl"}')
        assert model_grid("TestTpl", 2) == GridSpec(shape=(80, 96, 80), start=(10, 2, 10))
    finally:
        for path in tpl_dir.iterdir():
            path.unlink()
        tpl_dir.rmdir()


def test_crop_then_uncrop_restores_the_window_and_zeros_elsewhere():
    rng = np.random.default_rng(0)
    volume = rng.random((91, 109, 91)).astype(np.float32)
    grid = GridSpec(shape=(80, 96, 80), start=(6, 8, 0))
    cropped = crop_to_grid(volume, grid)
    assert cropped.shape == (80, 96, 80) and cropped.dtype == np.float32
    restored = uncrop_from_grid(cropped, grid, volume.shape)
    window = (slice(6, 86), slice(8, 104), slice(0, 80))
    np.testing.assert_array_equal(restored[window], volume[window])
    restored[window] = 0
    assert not restored.any()
    np.testing.assert_array_equal(crop_to_grid(uncrop_from_grid(cropped, grid, volume.shape), grid), cropped)


def test_crop_pads_with_zeros_outside_the_template_grid():
    volume = np.ones((20, 20, 20, 2))
    grid = GridSpec(shape=(32, 16, 16), start=(-6, 2, 2))
    cropped = crop_to_grid(volume, grid)
    assert cropped.shape == (32, 16, 16, 2)
    assert not cropped[:6].any() and not cropped[26:].any() and cropped[6:26].all()
    np.testing.assert_array_equal(uncrop_from_grid(cropped, grid, volume.shape)[:, 2:18, 2:18], 1)


def test_grid_affine_maps_window_origin_to_template_start_voxel():
    template_affine = np.array([[2, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1.0]])
    grid = GridSpec(shape=(80, 96, 80), start=(6, 8, 0))
    np.testing.assert_allclose(grid_affine(template_affine, grid) @ [0, 0, 0, 1],
                               template_affine @ [6, 8, 0, 1])
