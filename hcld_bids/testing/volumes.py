"""A vendored real scan as a model-grid-sized volume (tests and benchmarks that need real anatomy, no ANTs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCANS_DIR = Path(__file__).resolve().parents[1] / "data" / "t1w"


def real_volume(name: str = "siemens_prismafit3T_xa30_s5_nonorm.nii.gz", shape=(80, 96, 80)) -> np.ndarray:
    """The vendored scan ``name`` (``hcld_bids/data/t1w``) in RAS+, scaled to [0, 1] by its 0.5/99.5 percentiles
    and cropped/zero-padded to ``shape`` around its intensity-weighted center."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(SCANS_DIR / name)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    lo, hi = np.percentile(data, [0.5, 99.5])
    data = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
    grid = np.indices(data.shape).reshape(3, -1)
    center = (grid * data.reshape(1, -1)).sum(1) / data.sum()
    out = np.zeros(shape, np.float32)
    src, dst = [], []
    for c, n, s in zip(center, data.shape, shape):
        start = int(round(c)) - s // 2
        a, b = max(0, start), min(n, start + s)
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    out[tuple(dst)] = data[tuple(src)]
    return out
