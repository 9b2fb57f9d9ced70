"""Brain mask in template space: the template's mask, refined on the subject's intensities.

After affine registration the template brain mask is close to the subject's brain but not on it:
brains differ in shape, so the outline is off by a few millimetres. The refinement keeps what the
template is sure of and lets the subject's image decide near the outline:

1. ``core``: the template mask eroded by ``band_mm`` is kept as it is (deep grey and white matter,
   ventricles and other CSF inside the brain);
2. ``band``: within the template mask dilated by ``band_mm``, voxels brighter than an Otsu threshold
   computed over that dilated region are added: brain tissue is bright on a T1w, while the CSF rim,
   bone and background are dark. Voxels brighter than the 99.5th percentile of ``core`` (fat of
   the scalp and bone marrow, brighter than any white matter) are not;
3. a closing with a ``closing_mm`` ball puts back sulcal CSF between gyri and smooths the outline,
   holes are filled (CSF inside the brain), fat voxels on the outline are taken out again and only the
   largest connected component is kept (drops bits of scalp or eyes).

Structuring elements are balls in millimetres, so the result does not depend on the grid's
resolution more than the grid itself does.

The input must be bias-corrected (N4), otherwise a global threshold cuts differently in bright and
dark parts of the head.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

#: Width of the band around the template outline that the subject's intensities may change.
DEFAULT_BAND_MM = 4.0
#: Radius of the closing that fills sulci at the outline.
DEFAULT_CLOSING_MM = 6.0
#: Band voxels brighter than this percentile of the core (mostly white matter) are taken for fat.
FAT_PERCENTILE = 99.5


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean 3D mask (an empty mask stays empty)."""
    labels, count = ndi.label(mask)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def dilate(mask: np.ndarray, radius_mm: float, voxel_size_mm=1.0) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (through a Euclidean distance transform: fast for
    large radii)."""
    if not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask, sampling=voxel_size_mm) <= radius_mm


def erode(mask: np.ndarray, radius_mm: float, voxel_size_mm=1.0) -> np.ndarray:
    """Erosion by a ball of ``radius_mm``; voxels beyond the array count as background."""
    padded = np.pad(mask, 1)
    eroded = ndi.distance_transform_edt(padded, sampling=voxel_size_mm) > radius_mm
    return eroded[(slice(1, -1),) * 3]


def closing(mask: np.ndarray, radius_mm: float, voxel_size_mm=1.0) -> np.ndarray:
    """Closing by a ball of ``radius_mm``; the array border does not erode the result."""
    pad = int(np.ceil(radius_mm / np.min(voxel_size_mm))) + 1
    padded = np.pad(mask, pad)
    closed = ~dilate(~dilate(padded, radius_mm, voxel_size_mm), radius_mm, voxel_size_mm)
    return closed[(slice(pad, -pad),) * 3]


#: (template mask digest, shape, band, voxel) -> (dilated, eroded): the template's band is the same for every
#: image, and each refinement would otherwise spend two of its four distance transforms on it.
_TEMPLATE_BANDS: dict = {}


def _template_band(template_mask: np.ndarray, band: float, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """The template mask dilated and eroded by ``band`` mm, computed once per process (read-only arrays)."""
    key = (hashlib.sha1(np.packbits(template_mask)).hexdigest(), template_mask.shape, band, voxel)
    if key not in _TEMPLATE_BANDS:
        if len(_TEMPLATE_BANDS) >= 4:
            _TEMPLATE_BANDS.clear()
        dilated, core = dilate(template_mask, band, voxel), erode(template_mask, band, voxel)
        dilated.flags.writeable = core.flags.writeable = False
        _TEMPLATE_BANDS[key] = (dilated, core)
    return _TEMPLATE_BANDS[key]


def refine_brain_mask(image: np.ndarray, template_mask: np.ndarray, voxel_size_mm: float,
                      band_mm: float = DEFAULT_BAND_MM,
                      closing_mm: float = DEFAULT_CLOSING_MM) -> np.ndarray:
    """Subject brain mask on the template grid.

    Parameters
    ----------
    image : (X, Y, Z) array
        Bias-corrected T1w resampled onto the template grid.
    template_mask : (X, Y, Z) array
        The template's brain mask (non-zero = brain).
    voxel_size_mm : float
        Voxel size of the grid, to turn ``band_mm`` into voxels.

    Returns
    -------
    (X, Y, Z) bool array
    """
    image = np.asarray(image, dtype=np.float32)
    template_mask = np.asarray(template_mask) > 0
    if image.shape != template_mask.shape:
        raise ValueError(f"image {image.shape} and template mask {template_mask.shape} differ in shape")
    voxel = float(voxel_size_mm)
    # At least one voxel, rounded to whole voxels as a voxel-based structuring element would be.
    band = max(1, int(round(band_mm / voxel))) * voxel
    close = max(1, int(round(closing_mm / voxel))) * voxel
    dilated, core = _template_band(template_mask, band, voxel)
    values = image[dilated]
    if values.size == 0 or values.max() <= values.min():
        return largest_component(ndi.binary_fill_holes(template_mask))
    threshold = threshold_otsu(values)
    ceiling = np.percentile(image[core], FAT_PERCENTILE) if core.any() else np.inf
    fat = ~core & (image > ceiling)
    mask = core | (dilated & (image > threshold) & ~fat)
    mask = closing(mask, close, voxel)
    mask = ndi.binary_fill_holes(mask)
    # The closing may bridge over fat again; fat on the outline goes, while bright spots enclosed
    # by brain (vessels) are filled back.
    return largest_component(ndi.binary_fill_holes(mask & ~fat))
