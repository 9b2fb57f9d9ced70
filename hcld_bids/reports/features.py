"""What the group level reads from each image, in one pass over its three files.

:func:`read_image` loads the preprocessed image, the brain mask and the harmonized image once and
returns coarse image features (block means of the brain at :data:`FEATURE_MM`), optionally one
axial slice pair for mosaics, and the QC values when the sidecar lacks them. It imports only numpy,
scipy and nibabel, so that worker processes start fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from . import metrics

#: Edge of the blocks whose mean brain intensity makes the group-level image features.
FEATURE_MM = 4.0
#: A block's feature is used for an image when at least this fraction of the block is its brain.
MIN_BLOCK_BRAIN = 0.25


@dataclass
class ImageTask:
    """One image for :func:`read_image`."""

    index: int
    preproc: str
    mask: str
    harmonized: str
    block_index: np.ndarray | None  # flat indices of the feature blocks (None: all)
    want_slice: bool
    want_qc: bool


def block_size(zooms) -> int:
    return max(1, int(round(FEATURE_MM / float(np.mean(zooms[:3])))))


def block_sums(volume: np.ndarray, block: int) -> np.ndarray:
    """Sums over ``block``-voxel cubes (the volume is zero-padded to a multiple), flattened."""
    shape = [int(math.ceil(n / block)) * block for n in volume.shape]
    padded = np.zeros(shape, dtype=np.float32)
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    x, y, z = (n // block for n in shape)
    return padded.reshape(x, block, y, block, z, block).sum(axis=(1, 3, 5), dtype=np.float64).ravel()


def brain_blocks(mask: np.ndarray, zooms, min_fraction: float = 0.5) -> np.ndarray:
    """Flat indices of the feature blocks that are at least ``min_fraction`` brain in ``mask``."""
    block = block_size(zooms)
    return np.nonzero(block_sums((mask > 0).astype(np.float32), block) / block**3 >= min_fraction)[0]


def read_image(task: ImageTask) -> dict:
    """Features (and optionally a slice pair and QC values) of one image; see the module docstring.

    Returns ``{"index", "before", "after" (float32 block means, NaN where the block is not brain),
    "slice" ((before, after) 2D arrays or None), "qc" (dict or None), "error" (str or None)}``.
    """
    try:
        preproc_img = nib.load(task.preproc)
        preproc = np.asarray(preproc_img.dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(task.mask).dataobj) > 0
        harmonized = np.asarray(nib.load(task.harmonized).dataobj, dtype=np.float32)
    except Exception as error:  # noqa: BLE001 - a corrupt file is reported in the table, not fatal
        return {"index": task.index, "error": f"unreadable: {error}".splitlines()[0][:200]}
    if not preproc.shape == mask.shape == harmonized.shape:
        return {"index": task.index, "error": f"shapes differ: {preproc.shape}, {mask.shape}, {harmonized.shape}"}
    zooms = preproc_img.header.get_zooms()[:3]
    block = block_size(zooms)
    coverage = block_sums(mask.astype(np.float32), block)
    with np.errstate(invalid="ignore", divide="ignore"):
        before = block_sums(np.where(mask, preproc, 0), block) / coverage
        after = block_sums(np.where(mask, harmonized, 0), block) / coverage
    unused = coverage < MIN_BLOCK_BRAIN * block**3
    before[unused] = np.nan
    after[unused] = np.nan
    if task.block_index is not None:
        before, after = before[task.block_index], after[task.block_index]
    result = {"index": task.index, "before": before.astype(np.float32), "after": after.astype(np.float32),
              "slice": None, "qc": None, "error": None}
    if task.want_slice:
        z = int(round(np.argwhere(mask)[:, 2].mean())) if mask.any() else mask.shape[2] // 2
        result["slice"] = (np.where(mask[:, :, z], preproc[:, :, z], 0).T.astype(np.float32),
                           harmonized[:, :, z].T.astype(np.float32))
    if task.want_qc:
        edges, input_hist = metrics.brain_histogram(preproc, mask)
        sp, blocks, _ = metrics.structure_scores(preproc, harmonized, mask, voxel_size_mm=zooms)
        qc = {"HistogramBins": edges.tolist(), "InputHistogram": input_hist.tolist(),
              "OutputHistogram": metrics.brain_histogram(harmonized, mask)[1].tolist(),
              "StructurePreservation": sp, "MaskDice": metrics.mask_dice(mask, metrics.output_mask(harmonized, mask))}
        qc["Flags"] = metrics.qc_flags(qc, metrics.worst_block(blocks))
        result["qc"] = qc
    return result
