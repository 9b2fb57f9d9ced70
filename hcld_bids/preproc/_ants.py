"""Conversions between nibabel and ANTsPy images, and ANTs/ITK threading.

ANTsPy imports take seconds, so ``ants`` is imported inside functions, not at module import.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

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


def _library_key() -> str | None:
    """``path:size:mtime`` of ANTsPy's compiled library, found without importing ``ants`` (None if absent)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("ants")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        for lib in sorted(Path(directory).glob("lib.*")):
            try:
                stat = lib.stat()
            except OSError:
                continue
            return f"{lib.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return None


def version_cache_file() -> Path:
    """Where the ANTs version of an installation is remembered: ``$HCLD_BIDS_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/hcld-bids``, else ``~/.cache/hcld-bids``."""
    base = os.environ.get("HCLD_BIDS_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "hcld-bids")
    return Path(base) / "ants-version.json"


def _read_cached_version(key: str) -> str | None:
    try:
        cached = json.loads(version_cache_file().read_text())
    except (OSError, ValueError):
        return None
    value = cached.get(key) if isinstance(cached, dict) else None
    return value if isinstance(value, str) and value else None


def _write_cached_version(key: str, value: str) -> None:
    """Remember the version (best effort: a cache that cannot be written is no error)."""
    path = version_cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ants-version.", dir=path.parent)
        with os.fdopen(fd, "w") as stream:
            json.dump({key: value}, stream)
        os.replace(tmp, path)
    except OSError:
        pass


@lru_cache(maxsize=1)
def ants_version() -> str:
    """Version of the ANTs library inside ANTsPy, e.g. ``2.5.1.post95-g2236a75``.

    Asking the library means importing ANTsPy (about 3 s, for a string of the methods text), so the
    answer is remembered per installation of the library (its path, size and modification time) in
    :func:`version_cache_file`; a changed or reinstalled library is asked again.
    """
    key = _library_key()
    if key is not None:
        cached = _read_cached_version(key)
        if cached is not None:
            return cached
    version = _ask_ants_version()
    if key is not None and version != "unknown":
        _write_cached_version(key, version)
    return version


def _ask_ants_version() -> str:
    """The version ANTs prints for ``antsRegistration --version``.

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
