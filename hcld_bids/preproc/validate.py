"""Checks that a T1w file holds one usable 3D image, and its RAS-reoriented copy.

Every problem is reported as one line naming the file, what is wrong and what to do, through
:class:`~hcld_bids.errors.BadDataError` (exit code 65), or
:class:`~hcld_bids.errors.MissingInputError` (66) when the file does not exist.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import BadDataError, MissingInputError

#: Plausible voxel sizes of a structural MRI, in millimetres.
VOXEL_SIZE_RANGE_MM = (0.3, 5.0)
#: A brain at the coarsest voxel size still spans this many voxels per axis.
MIN_VOXELS_PER_AXIS = 16
#: Least field of view along every axis, in millimetres. A whole brain spans about 140 x 170 x 120 mm in
#: adults and still more than 100 mm along every axis in young children, so an image narrower than
#: 80 mm in any direction cannot hold one: a slab, a localizer, a cropped patch or a header whose
#: voxel sizes are not in millimetres. (The model window itself covers 160 x 192 x 160 mm.)
MIN_FOV_MM = 80.0


def _from_bytes(raw: bytes):
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return klass.from_bytes(raw)
        except Exception:  # wrong NIfTI version: try the next one
            continue
    raise ValueError("no NIfTI-1 or NIfTI-2 header found")


def _bad(path, problem: str, fix: str) -> BadDataError:
    return BadDataError(f"{path}: {problem}; {fix}.")


def load_t1w(path) -> nib.Nifti1Image:
    """Read and check a T1w NIfTI file; return it as a 3D image reoriented to RAS.

    The voxel values are those of the file (reorientation only permutes and flips axes; a
    trailing 4th dimension of length 1 is dropped). Raises BadDataError/MissingInputError.
    """
    path = Path(os.fspath(path))
    if path.is_dir():
        raise _bad(path, "is a directory, not a NIfTI file", "give the path of the .nii or .nii.gz file")
    if not path.is_file():
        raise MissingInputError(f"{path}: T1w file not found; check the path or the BIDS dataset.")
    if path.name.endswith(".gz"):
        # Reading the whole stream makes gzip verify its CRC and length: nibabel alone stops
        # after the voxels it needs and would accept a corrupt or truncated file.
        try:
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            raise _bad(path, f"cannot be decompressed ({exc.__class__.__name__}: {exc}); the file is "
                       "truncated or its gzip stream is corrupt", "copy or convert the file again") from exc
        loader = lambda: _from_bytes(raw)  # noqa: E731
    else:
        loader = lambda: nib.load(path)  # noqa: E731
    try:
        img = loader()
    except Exception as exc:  # nibabel raises several types for unreadable headers
        raise _bad(path, f"not a readable NIfTI image ({exc.__class__.__name__}: {exc})",
                   "re-export the scan as NIfTI-1/2 (e.g. with dcm2niix)") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise _bad(path, f"is a {type(img).__name__}, not a NIfTI image",
                   "convert it to NIfTI (.nii or .nii.gz)")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) == 1):
        raise _bad(path, f"has shape {img.shape}: a 2D image (one slice), not a 3D volume",
                   "convert the whole 3D T1w series (e.g. with dcm2niix), not a single slice")
    if len(shape) != 3:
        raise _bad(path, f"has shape {img.shape}, not a single 3D volume",
                   "split the series and keep one T1w volume per file")
    if min(shape) < MIN_VOXELS_PER_AXIS:
        raise _bad(path, f"has shape {shape}, too small for a head image",
                   f"provide a 3D T1w with at least {MIN_VOXELS_PER_AXIS} voxels along each axis")
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise _bad(path, "has a degenerate voxel-to-world affine (sform/qform)",
                   "fix the header orientation (e.g. reconvert from DICOM)")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    low, high = VOXEL_SIZE_RANGE_MM
    if np.any(zooms < low) or np.any(zooms > high):
        raise _bad(path, f"has voxel sizes {tuple(np.round(zooms, 3))} mm, outside {low}-{high} mm",
                   "check the header's pixdim/affine units (millimetres expected)")
    fov = np.asarray(shape, dtype=float) * zooms
    if np.any(fov < MIN_FOV_MM - 1e-6):
        shown = " x ".join(f"{v:g}" for v in np.round(fov, 1))
        raise _bad(path, f"covers only {shown} mm ({' x '.join(map(str, shape))} voxels), less than a brain",
                   f"provide a whole-head 3D T1w covering at least {MIN_FOV_MM:g} mm along every axis")
    if np.issubdtype(img.get_data_dtype(), np.complexfloating):
        raise _bad(path, f"holds complex values ({img.get_data_dtype()}), not a magnitude image",
                   "export the magnitude image of the T1w series")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise _bad(path, f"cannot be read to the end ({exc.__class__.__name__}: {exc}); the file is "
                   "truncated or its gzip stream is corrupt", "copy or convert the file again") from exc
    if not np.all(np.isfinite(data)):
        raise _bad(path, "contains NaN or infinite values", "re-export the scan without NaNs")
    if not np.any(data != 0) or float(data.max()) <= float(data.min()):
        raise _bad(path, "is empty (all voxels have the same value)", "check that the right file was converted")
    header = img.header.copy()
    header.set_data_shape(shape)
    squeezed = nib.Nifti1Image(np.asarray(img.dataobj).reshape(shape), affine, header)
    return nib.as_closest_canonical(squeezed)
