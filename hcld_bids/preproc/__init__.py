"""Anatomical preprocessing as plain Python functions (no nipype): validation, N4, registration,
brain mask, intensity scaling, model grid. The nipype interfaces in
:mod:`hcld_bids.interfaces.preproc` wrap them one by one."""

from .brainmask import refine_brain_mask
from .grid import GridSpec, crop_to_grid, grid_affine, grid_from_mask, model_grid, uncrop_from_grid
from .intensity import scale_intensity, scaling_reference, unscale_intensity
from .spec import check_preprocessing_spec, preprocessing_spec
from .validate import load_t1w

__all__ = [
    "GridSpec",
    "check_preprocessing_spec",
    "crop_to_grid",
    "grid_affine",
    "grid_from_mask",
    "load_t1w",
    "model_grid",
    "preprocessing_spec",
    "refine_brain_mask",
    "scale_intensity",
    "scaling_reference",
    "uncrop_from_grid",
    "unscale_intensity",
]
