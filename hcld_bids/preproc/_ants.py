"""Conversions between nibabel and ANTsPy images, and ANTs/ITK threading.

ANTsPy imports take seconds, so ``ants`` is imported inside functions, not at module import.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache

import nibabel as nib
import numpy as np

_ITK_THREADS = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def set_ants_threads(num_threads: int) -> None:
    """Let ANTs/ITK use ``num_threads`` threads in this process.

    ITK reads the variable when it first needs threads; nipype runs each node in a worker that
    the same run configures identically, so setting it before the first ANTs call is enough.
    """
    os.environ[_ITK_THREADS] = str(max(1, int(num_threads)))


def to_ants(img: nib.Nifti1Image):
    """nibabel image (3D) -> float32 ANTsImage with the same voxel-to-world mapping."""
    import ants

    # ANTsPy warns about or refuses headers whose units are unknown (many converters leave them
    # so); NIfTI spatial units of MRI are millimetres.
    data = np.asarray(img.dataobj, dtype=np.float32)
    fixed = nib.Nifti1Image(data, img.affine)
    fixed.header.set_xyzt_units("mm", "sec")
    return ants.from_nibabel_nifti(fixed)


def to_nibabel(image, like: nib.Nifti1Image | None = None, dtype=np.float32) -> nib.Nifti1Image:
    """ANTsImage -> nibabel image of ``dtype``; header fields (codes, description) from ``like``."""
    import ants

    out = ants.to_nibabel_nifti(image)
    data = np.asarray(out.dataobj).astype(dtype)
    header = like.header.copy() if like is not None else None
    result = nib.Nifti1Image(data, out.affine, header)
    result.set_data_dtype(dtype)
    code = int(like.header["sform_code"]) if like is not None and like.header["sform_code"] > 0 else 1
    result.header.set_sform(out.affine, code=code)
    result.header.set_qform(out.affine, code=code)
    result.header.set_xyzt_units("mm")
    result.header.set_slope_inter(None, None)
    return result


def antspyx_version() -> str:
    """Version of the ANTsPy package (cheap: read from its metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("antspyx")
    except PackageNotFoundError:  # pragma: no cover - ANTsPy is a hard dependency
        return "unknown"


@lru_cache(maxsize=1)
def ants_version() -> str:
    """Version of the ANTs library inside ANTsPy, e.g. ``2.5.1.post95-g2236a75``.

    ANTs prints it from C++ to the process's standard output, so the file descriptor is
    redirected to a temporary file for the call.
    """
    import sys

    from ants.internal import get_lib_fn

    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 1)
        try:
            get_lib_fn("antsRegistration")(["--version"])
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("ANTs Version:"):
            return line.split(":", 1)[1].strip().lstrip("v")
    return "unknown"
