#!/usr/bin/env python
"""Build offline MNI152NLin6Asym files (whole-head T1w + brain mask) in TemplateFlow layout.

We have FSL's MNI152 6th-generation nonlinear template (TemplateFlow: MNI152NLin6Asym) but no
offline copy of TemplateFlow's brain mask, so this script derives one:

1. nilearn ships the ICBM152 2009a symmetric template, brain-extracted (its non-zero voxels are
   MNI's intracranial brain mask, CSF included). Both templates live in MNI space, so that mask is
   carried into the FSL grid through world coordinates (linear interpolation, > 0.5).
2. The two templates are different averages, so the boundary is refined on the FSL template's own
   intensities: inside a band of +-4 mm around the carried mask, keep voxels brighter than an Otsu
   threshold computed within the dilated mask (this separates brain tissue from the dark CSF/bone
   rim of the FSL head), keep the eroded mask as it is (deep CSF, ventricles), close with a 4 mm
   structuring element (sulcal CSF between gyri), fill holes, keep the largest component.

The T1w is FSL's image reoriented to RAS (a lossless axis flip; TemplateFlow's copy is RAS too, so
voxel indices agree with it). The 1 mm file of ../shared/data/templates is brain-extracted; when
that is detected, the whole-head 1 mm T1w is rebuilt: the 2 mm head carried onto the 1 mm grid,
with the 1 mm brain values inside the brain.

Usage::

    python scripts/make_template_mask.py --out hcld_bids/data/templateflow --resolution 2 \
        --png /tmp/mask_res-02.png
    python scripts/make_template_mask.py --out $TEMPLATEFLOW_HOME --resolution 1 --resolution 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

TEMPLATE = "MNI152NLin6Asym"
FSL_FILES = {1: "MNI152_T1_1mm.nii.gz", 2: "MNI152_T1_2mm.nii.gz"}
REFINE_BAND_MM = 4.0
#: A whole-head template fills most of its field of view; a brain-extracted one about a quarter.
BRAIN_EXTRACTED_MAX_FILL = 0.5


def default_templates_dir() -> Path:
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "templates"


def icbm_brain_path() -> Path:
    import nilearn

    return (
        Path(nilearn.__file__).parent
        / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )


def resample_like(src: nib.Nifti1Image, target: nib.Nifti1Image, order: int = 1) -> np.ndarray:
    """Sample ``src`` at the voxel centres of ``target`` through world coordinates (mm)."""
    vox2vox = np.linalg.inv(src.affine) @ target.affine
    return ndi.affine_transform(
        np.asarray(src.dataobj, dtype=np.float32), vox2vox[:3, :3], vox2vox[:3, 3],
        output_shape=target.shape[:3], order=order, mode="constant", cval=0.0,
    )


def is_brain_extracted(img: nib.Nifti1Image) -> bool:
    data = np.asarray(img.dataobj)
    return float((data > 0).mean()) < BRAIN_EXTRACTED_MAX_FILL


def whole_head_t1w(templates_dir: Path, resolution: int) -> nib.Nifti1Image:
    """FSL's T1w at ``resolution`` mm, RAS, whole head (rebuilt if the file is brain-extracted)."""
    img = nib.as_closest_canonical(nib.load(templates_dir / FSL_FILES[resolution]))
    if not is_brain_extracted(img):
        return img
    if resolution == 2:
        raise SystemExit(f"{templates_dir / FSL_FILES[2]} is brain-extracted; a whole-head 2 mm template is needed")
    head = nib.as_closest_canonical(nib.load(templates_dir / FSL_FILES[2]))
    brain = np.asarray(img.dataobj, dtype=np.float32)
    upsampled = resample_like(head, img, order=1)
    inside = brain > 0
    # The 1 mm brain and the 2 mm head share an intensity scale up to rounding; match it anyway so
    # that no step appears at the brain boundary.
    scale = float(np.median(upsampled[inside] / np.maximum(brain[inside], 1.0)))
    data = np.where(inside, brain * scale, upsampled).astype(np.float32)
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(np.float32)
    out.header.set_sform(img.affine, code=4)
    out.header.set_qform(img.affine, code=4)
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def derive_brain_mask(t1w: nib.Nifti1Image, icbm_brain: nib.Nifti1Image) -> np.ndarray:
    """Brain mask (bool, shape of ``t1w``) of the FSL template, from the ICBM 2009a brain."""
    intensities = np.asarray(t1w.dataobj, dtype=np.float32)
    carried = resample_like(
        nib.Nifti1Image((np.asarray(icbm_brain.dataobj) > 0).astype(np.float32), icbm_brain.affine),
        t1w,
    ) > 0.5
    voxel = float(min(t1w.header.get_zooms()[:3]))
    radius = max(1, int(round(REFINE_BAND_MM / voxel)))
    cross = ndi.generate_binary_structure(3, 1)
    dilated = ndi.binary_dilation(carried, cross, iterations=radius)
    eroded = ndi.binary_erosion(carried, cross, iterations=radius)
    threshold = threshold_otsu(intensities[dilated])
    mask = eroded | (dilated & (intensities > threshold))
    mask = ndi.binary_closing(mask, cross, iterations=radius)
    mask = ndi.binary_fill_holes(mask)
    return _largest_component(mask)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def save_atomic(img: nib.Nifti1Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def mosaic_png(t1w: nib.Nifti1Image, mask: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(t1w.dataobj, dtype=np.float32)
    fig, axes = plt.subplots(3, 6, figsize=(18, 9))
    for row, axis in enumerate(range(3)):
        for col, frac in enumerate(np.linspace(0.2, 0.8, 6)):
            index = [slice(None)] * 3
            index[axis] = int(frac * data.shape[axis])
            ax = axes[row, col]
            ax.imshow(np.rot90(data[tuple(index)]), cmap="gray")
            ax.contour(np.rot90(mask[tuple(index)]), [0.5], colors="r", linewidths=0.7)
            ax.axis("off")
    fig.suptitle(f"{path.stem}: derived brain mask (red) on the FSL MNI152 template")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def build(templates_dir: Path, out_dir: Path, resolution: int, png_dir: Path | None) -> dict:
    t1w = whole_head_t1w(templates_dir, resolution)
    mask = derive_brain_mask(t1w, nib.load(icbm_brain_path()))
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), t1w.affine)
    mask_img.header.set_sform(t1w.affine, code=4)
    mask_img.header.set_qform(t1w.affine, code=4)
    tpl_dir = out_dir / f"tpl-{TEMPLATE}"
    stem = f"tpl-{TEMPLATE}_res-{resolution:02d}"
    save_atomic(t1w, tpl_dir / f"{stem}_T1w.nii.gz")
    save_atomic(mask_img, tpl_dir / f"{stem}_desc-brain_mask.nii.gz")
    voxel_ml = float(np.prod(t1w.header.get_zooms()[:3])) / 1000.0
    report = {"resolution": resolution, "volume_ml": float(mask.sum()) * voxel_ml}
    # Independent check: where the 1 mm file is FSL's brain-extracted template, its support is
    # FSL's own brain mask.
    fsl_1mm = nib.as_closest_canonical(nib.load(templates_dir / FSL_FILES[1]))
    if is_brain_extracted(fsl_1mm):
        support = resample_like(
            nib.Nifti1Image(ndi.binary_fill_holes(np.asarray(fsl_1mm.dataobj) > 0).astype(np.float32),
                            fsl_1mm.affine),
            t1w,
        ) > 0.5
        report["dice_vs_fsl_brain_support"] = dice(mask, support)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        mosaic_png(t1w, mask, png_dir / f"{stem}_desc-brain_mask.png")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--templates", type=Path, default=default_templates_dir(),
                        help="directory with FSL's MNI152_T1_{1,2}mm.nii.gz (default: ../shared/data/templates)")
    parser.add_argument("--out", type=Path, required=True,
                        help="TemplateFlow-layout output directory (a TEMPLATEFLOW_HOME or the package copy)")
    parser.add_argument("--resolution", type=int, action="append", choices=sorted(FSL_FILES),
                        help="TemplateFlow resolution index (1 = 1 mm, 2 = 2 mm); repeatable; default 2")
    parser.add_argument("--png", type=Path, default=None, help="directory for mosaic PNGs to check the masks")
    args = parser.parse_args(argv)
    for resolution in args.resolution or [2]:
        report = build(args.templates.resolve(), args.out, resolution, args.png)
        extra = (f", Dice with FSL's brain-extracted support {report['dice_vs_fsl_brain_support']:.3f}"
                 if "dice_vs_fsl_brain_support" in report else "")
        print(f"res-{resolution:02d}: brain mask {report['volume_ml']:.0f} cm3{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
