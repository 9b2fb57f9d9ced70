"""Registration of a T1w to the template (ANTs), and moving images between the two spaces.

``affine`` (default): rigid then affine stages, mutual information, initialised by aligning the
centres of mass (ANTs' ``antsRegistrationSyNQuick[a]`` recipe), then one more affine stage that
refines it at the template's own resolution (:data:`AFFINE_REFINEMENT`). The quick recipe stops at
half the template's resolution (its last level has no iterations), so on a 2 mm template it places
the same head, scanned on different scanners, about 0.3 mm RMS apart (up to 0.6 mm), depending on each
scanner's noise, blur and contrast; the refinement narrows that spread to about 0.26 mm
(benchmarks/RESULTS.md, "Registration consistency across scanners"). ``syn``: the quick recipe followed by a SyN deformable stage
(``antsRegistrationSyNQuick[s]``), without the refinement.

Transforms are ANTs/ITK files in world (physical) coordinates, so they apply to the original T1w as
well as to its RAS-reoriented copy:

* affine: ``*_xfm.mat`` maps T1w -> template (ITK AffineTransform, the file written as
  ``from-T1w_to-<tpl>_mode-image_xfm.mat``); its inverse is also written as a ``.mat``;
* syn: ``*_xfm.h5`` composite transforms, one per direction.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ._ants import to_ants, to_nibabel

#: User-facing registration names -> ANTsPy recipes.
REGISTRATIONS = {
    "affine": "antsRegistrationSyNQuick[a]",
    "syn": "antsRegistrationSyNQuick[s]",
}
#: ``--sloppy`` (testing only): ANTsPy's fast affine recipe (one stage, coarse, few iterations; about 6x
#: faster than the default on a 3 mm head). SyN keeps its recipe.
SLOPPY_REGISTRATIONS = {"affine": "AffineFast", "syn": REGISTRATIONS["syn"]}
#: The affine refinement stage of ``affine`` (ANTsPy ``registration`` arguments, type ``Affine``,
#: started from the quick recipe's transform): Mattes mutual information (32 bins, half of the voxels),
#: two levels at half and full template resolution (smoothing 1 and 0 voxels), 100 and 50 iterations.
AFFINE_REFINEMENT = {
    "aff_metric": "mattes", "aff_sampling": 32, "aff_random_sampling_rate": 0.5,
    "aff_iterations": (100, 50), "aff_shrink_factors": (2, 1), "aff_smoothing_sigmas": (1, 0),
}
#: Fixed seed of ANTs' metric sampling, so that reruns give the same transform.
DEFAULT_RANDOM_SEED = 20240917


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_to_template`.

    ``warped``: the moving image resampled onto the template grid (linear interpolation);
    ``forward``: transform file T1w -> template; ``inverse``: transform file template -> T1w.
    """

    warped: nib.Nifti1Image
    forward: Path
    inverse: Path


def _seed_ants(seed: int) -> None:
    # antsRegistration otherwise seeds its metric sampling from the clock.
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))


def register_to_template(moving: nib.Nifti1Image, template: nib.Nifti1Image, out_dir,
                         *, registration: str = "affine", prefix: str = "T1w_to_template",
                         random_seed: int = DEFAULT_RANDOM_SEED, sloppy: bool = False) -> RegistrationResult:
    """Register ``moving`` (bias-corrected T1w) to ``template`` (whole-head T1w).

    ``sloppy`` (testing only) uses :data:`SLOPPY_REGISTRATIONS` and skips the affine refinement.
    Transform files are written into ``out_dir`` as ``<prefix>_fwd_xfm.{mat,h5}`` and
    ``<prefix>_inv_xfm.{mat,h5}``.
    """
    import ants

    if registration not in REGISTRATIONS:
        raise ValueError(f"unknown registration {registration!r}; choose one of {sorted(REGISTRATIONS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _seed_ants(random_seed)
    fixed = to_ants(template)
    moving_ants = to_ants(moving)
    composite = registration != "affine"
    # ANTsPy finds its outputs by globbing "<outprefix>*[0-9]*": a private directory keeps
    # unrelated files out of that glob.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ants_") as scratch:
        result = ants.registration(
            fixed=fixed, moving=moving_ants,
            type_of_transform=(SLOPPY_REGISTRATIONS if sloppy else REGISTRATIONS)[registration],
            outprefix=str(Path(scratch) / "reg_"), write_composite_transform=composite,
        )
        if registration == "affine" and not sloppy:
            # The written transform is the quick one composed with the refinement (linear transforms collapse).
            result = ants.registration(
                fixed=fixed, moving=moving_ants, type_of_transform="Affine",
                initial_transform=result["fwdtransforms"][0], outprefix=str(Path(scratch) / "refine_"),
                **AFFINE_REFINEMENT,
            )
        ext = ".h5" if composite else ".mat"
        forward = out_dir / f"{prefix}_fwd_xfm{ext}"
        inverse = out_dir / f"{prefix}_inv_xfm{ext}"
        if composite:
            shutil.move(result["fwdtransforms"], forward)
            shutil.move(result["invtransforms"], inverse)
        else:
            (affine_file,) = result["fwdtransforms"]
            shutil.move(affine_file, forward)
            ants.write_transform(ants.read_transform(str(forward)).invert(), str(inverse))
        warped = to_nibabel(result["warpedmovout"], like=template)
    return RegistrationResult(warped=warped, forward=forward, inverse=inverse)


def apply_transform(image: nib.Nifti1Image, reference: nib.Nifti1Image, transform,
                    *, interpolation: str = "linear") -> nib.Nifti1Image:
    """Resample ``image`` onto the grid of ``reference`` through ``transform`` (a file that maps
    reference space -> image space points, i.e. the transform *from* image space *to* reference
    space in ANTs' naming, as written by :func:`register_to_template`).

    ``interpolation``: ``linear``, ``nearestNeighbor``, ``bSpline``... (ANTs names). float32.
    """
    import ants

    out = ants.apply_transforms(
        fixed=to_ants(reference), moving=to_ants(image), transformlist=[str(transform)],
        interpolator=interpolation, defaultvalue=0,
    )
    return to_nibabel(out, like=reference)


def _as_image(img) -> nib.Nifti1Image:
    return img if isinstance(img, nib.Nifti1Image) else nib.load(os.fspath(img))


def to_native(template_img, transform, native_ref, *, interpolation: str = "linear") -> nib.Nifti1Image:
    """Bring a template-space image back onto the native T1w grid.

    ``template_img``: image (or path) on the template grid; ``transform``: the template -> T1w
    transform (``inverse`` of :class:`RegistrationResult`, the workflow's ``xfm_tpl2t1w``);
    ``native_ref``: the T1w (RAS-reoriented) whose grid the result takes. float32.
    """
    return apply_transform(_as_image(template_img), _as_image(native_ref), transform,
                           interpolation=interpolation)


def mask_to_native(template_mask, transform, native_ref) -> np.ndarray:
    """A template-space mask on the native grid: linear interpolation then > 0.5 (bool array),
    which gives a smoother outline than nearest-neighbour."""
    return np.asarray(to_native(template_mask, transform, native_ref).dataobj) > 0.5
