"""Intensity scaling to [0, 1] by robust percentiles inside the brain.

T1w intensities have no physical unit and differ by scanner and reconstruction. The reference
values are the ``low`` and ``high`` percentiles (default 0.5 and 99.5) of the bias-corrected,
registered T1w inside the brain mask; the whole image is mapped linearly so that they become 0
and 1, then clipped to [0, 1]. Percentiles rather than min/max ignore single hot or dead voxels.
The two reference values are kept, so ``x = low + y * (high - low)`` undoes the mapping for every
voxel that was not clipped.
"""

from __future__ import annotations

import numpy as np

#: Percentiles (low, high) of brain intensities that map to 0 and 1.
DEFAULT_PERCENTILES = (0.5, 99.5)


def scaling_reference(image: np.ndarray, mask: np.ndarray,
                      percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """The intensities at ``percentiles`` of ``image`` inside ``mask`` (both 3D, same shape).

    Raises ValueError when the mask is empty or the brain has no contrast (high <= low).
    """
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask) > 0
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in shape")
    if not mask.any():
        raise ValueError("the brain mask is empty")
    low, high = np.percentile(image[mask], percentiles)
    if not high > low:
        raise ValueError(f"no intensity contrast inside the brain mask (low {low}, high {high})")
    return float(low), float(high)


def scale_intensity(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` -> 0 and ``high`` -> 1 linearly and clip to [0, 1]; float32, same shape."""
    scaled = (np.asarray(image, dtype=np.float64) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def unscale_intensity(scaled: np.ndarray, low: float, high: float) -> np.ndarray:
    """Inverse of :func:`scale_intensity` for unclipped voxels; float32, same shape."""
    return (low + np.asarray(scaled, dtype=np.float64) * (high - low)).astype(np.float32)
