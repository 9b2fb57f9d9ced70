"""The model grid: a window of the template grid whose shape is divisible by 16.

The networks downsample by 16 overall, so each side of their input must be a multiple of 16.
The window covers a fixed field of view (160 x 192 x 160 mm: 80 x 96 x 80 voxels at 2 mm,
160 x 192 x 160 at 1 mm), centred on the bounding box of the template's brain mask. Where the
window leaves the template grid it is padded with zeros.

Indices refer to the template image reoriented to RAS (TemplateFlow's own orientation), so
``start`` means the same voxels whatever copy of the template is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Field of view of the model window in millimetres (x, y, z).
MODEL_FOV_MM = (160.0, 192.0, 160.0)
#: Every side of the model input must be divisible by this.
GRID_MULTIPLE = 16


@dataclass(frozen=True)
class GridSpec:
    """A window of the template grid: ``shape`` voxels starting at voxel index ``start``.

    ``start`` may be negative or the window may end past the template grid; those voxels are
    zero-padded by :func:`crop_to_grid`.
    """

    shape: tuple[int, int, int]
    start: tuple[int, int, int]

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "start", tuple(int(s) for s in self.start))
        if len(self.shape) != 3 or len(self.start) != 3:
            raise ValueError(f"a grid needs 3 sides and 3 start indices, got {self.shape} and {self.start}")
        if any(s <= 0 or s % GRID_MULTIPLE for s in self.shape):
            raise ValueError(f"grid shape {self.shape} must be positive multiples of {GRID_MULTIPLE}")

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "start": list(self.start)}

    @classmethod
    def from_dict(cls, data: dict) -> "GridSpec":
        return cls(shape=tuple(data["shape"]), start=tuple(data["start"]))


#: Windows of the templates this project ships models for. They are the result of
#: :func:`grid_from_mask` on the project's derived brain masks (tests check that the rule still
#: gives them), fixed here so that a model bundle keeps matching when TemplateFlow's own brain
#: mask, whose bounding box may differ by a voxel, is installed instead.
KNOWN_GRIDS = {
    ("MNI152NLin6Asym", 2): GridSpec(shape=(80, 96, 80), start=(6, 8, 0)),
    ("MNI152NLin6Asym", 1): GridSpec(shape=(160, 192, 160), start=(12, 14, 0)),
}


def grid_shape(voxel_size_mm) -> tuple[int, int, int]:
    """Window shape covering :data:`MODEL_FOV_MM` at ``voxel_size_mm`` (scalar or 3 values)."""
    sizes = np.broadcast_to(np.asarray(voxel_size_mm, dtype=float), (3,))
    shape = np.asarray(MODEL_FOV_MM) / sizes
    rounded = np.round(shape).astype(int)
    if not np.allclose(shape, rounded, atol=1e-3) or np.any(rounded % GRID_MULTIPLE):
        raise ValueError(
            f"voxel size {tuple(sizes)} mm does not divide the {MODEL_FOV_MM} mm model window into "
            f"multiples of {GRID_MULTIPLE} voxels"
        )
    return tuple(int(s) for s in rounded)


def grid_from_mask(mask: np.ndarray, shape) -> GridSpec:
    """Window of ``shape`` centred on the bounding box of ``mask`` (3D, non-zero = brain).

    When the window fits in the template grid its start is clipped so that it stays inside;
    otherwise it is centred and sticks out on both sides (zero padding).
    """
    mask = np.asarray(mask) > 0
    if mask.ndim != 3 or not mask.any():
        raise ValueError("the brain mask must be a non-empty 3D array")
    nonzero = np.argwhere(mask)
    low, high = nonzero.min(axis=0), nonzero.max(axis=0) + 1  # [low, high) in voxels
    shape = np.asarray(shape, dtype=int)
    start = np.floor((low + high - shape) / 2.0 + 0.5).astype(int)
    dims = np.asarray(mask.shape)
    fits = shape <= dims
    start = np.where(fits, np.clip(start, 0, dims - shape), start)
    return GridSpec(shape=tuple(shape), start=tuple(start))


def model_grid(template: str, resolution: int) -> GridSpec:
    """The model window for ``template`` at TemplateFlow ``resolution``.

    Known templates return their fixed window (:data:`KNOWN_GRIDS`); others are computed from the
    template brain mask in TEMPLATEFLOW_HOME (which must be installed, see
    :func:`hcld_bids.templates.check_templates`).
    """
    key = (template, int(resolution))
    if key in KNOWN_GRIDS:
        return KNOWN_GRIDS[key]
    import nibabel as nib

    from ..templates import check_templates

    mask_img = nib.as_closest_canonical(nib.load(check_templates(template, resolution)["brain_mask"]))
    return grid_from_mask(np.asarray(mask_img.dataobj), grid_shape(mask_img.header.get_zooms()[:3]))


def _window(grid: GridSpec, dims) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (into the template array, into the window) of their overlap."""
    src, dst = [], []
    for start, size, dim in zip(grid.start, grid.shape, dims):
        lo, hi = max(start, 0), min(start + size, dim)
        if hi <= lo:
            raise ValueError(f"grid {grid} does not overlap a template grid of shape {tuple(dims)}")
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    return tuple(src), tuple(dst)


def crop_to_grid(array: np.ndarray, grid: GridSpec) -> np.ndarray:
    """Cut the window out of a template-grid array; shape (X, Y, Z, ...) -> grid.shape + (...)."""
    array = np.asarray(array)
    src, dst = _window(grid, array.shape[:3])
    out = np.zeros(grid.shape + array.shape[3:], dtype=array.dtype)
    out[dst] = array[src]
    return out


def uncrop_from_grid(array: np.ndarray, grid: GridSpec, template_shape) -> np.ndarray:
    """Put a window back into a zero template-grid array; grid.shape + (...) -> template_shape + (...).

    Exact inverse of :func:`crop_to_grid` on the part of the window inside the template grid.
    """
    array = np.asarray(array)
    if tuple(array.shape[:3]) != grid.shape:
        raise ValueError(f"array of shape {array.shape} is not on the grid {grid.shape}")
    template_shape = tuple(int(s) for s in template_shape[:3])
    src, dst = _window(grid, template_shape)
    out = np.zeros(template_shape + array.shape[3:], dtype=array.dtype)
    out[src] = array[dst]
    return out


def grid_affine(template_affine: np.ndarray, grid: GridSpec) -> np.ndarray:
    """Voxel-to-world affine of the window: the template's, shifted to voxel ``grid.start``."""
    shift = np.eye(4)
    shift[:3, 3] = grid.start
    return np.asarray(template_affine, dtype=float) @ shift
