"""nipype interfaces of the anatomical preprocessing, one per function of :mod:`hcld_bids.preproc`.

Every output file is written into the node's working directory (``runtime.cwd``), so nipype can
reuse it when a rerun has the same inputs. Images are written under a temporary name and renamed.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..errors import BadDataError


def _save(img: nib.Nifti1Image, cwd, name: str) -> str:
    """Write ``img`` as ``cwd/name`` atomically; return the absolute path."""
    from ..bids.atomic import atomic_path

    out = Path(cwd) / name
    with atomic_path(out) as tmp:
        nib.save(img, tmp)
    return str(out)


def _image(data: np.ndarray, affine: np.ndarray, like: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
    """New image of ``dtype`` keeping ``like``'s header fields, with ``affine`` as sform and qform."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine, like.header)
    img.set_data_dtype(dtype)
    code = int(like.header["sform_code"]) or 1
    img.header.set_sform(affine, code=code)
    img.header.set_qform(affine, code=code)
    img.header.set_slope_inter(None, None)
    return img


def _mask_image(mask: np.ndarray, like: nib.Nifti1Image) -> nib.Nifti1Image:
    return _image(mask, like.affine, like, np.uint8)


class _TimedOutputSpec(TraitedSpec):
    seconds = traits.Float(desc="wall time of this step in seconds (when it ran; a reused result keeps its own)")


class _TimedInterface(SimpleInterface):
    """A preprocessing step that reports its own wall time as the output ``seconds`` (the participant level
    sums them into the sidecar's ``WallTimeSeconds.preprocessing``)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        inner = cls.__dict__.get("_run_interface")
        if inner is None:
            return

        @functools.wraps(inner)
        def timed(self, runtime):
            start = time.perf_counter()
            runtime = inner(self, runtime)
            self._results["seconds"] = round(time.perf_counter() - start, 3)
            return runtime

        cls._run_interface = timed


class _ThreadsInputSpec(BaseInterfaceInputSpec):
    num_threads = traits.Int(1, usedefault=True, desc="threads ANTs/ITK may use")


# --- validation ------------------------------------------------------------------------------

class _ValidateT1wInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w NIfTI as found in the BIDS dataset")


class _ValidateT1wOutputSpec(_TimedOutputSpec):
    out_file = File(exists=True, desc="the same voxels, 3D, reoriented to RAS")


class ValidateT1w(_TimedInterface):
    """Check a T1w (:func:`hcld_bids.preproc.validate.load_t1w`) and write its RAS copy."""

    input_spec = _ValidateT1wInputSpec
    output_spec = _ValidateT1wOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.validate import load_t1w

        img = load_t1w(self.inputs.in_file)
        self._results["out_file"] = _save(img, runtime.cwd, "t1w_ras.nii.gz")
        return runtime


# --- N4 ----------------------------------------------------------------------------------------

class _N4InputSpec(_ThreadsInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D T1w")
    mask_file = File(exists=True, desc="fit the field inside this mask (default: rough head mask)")
    mask_dilation_mm = traits.Float(0.0, usedefault=True, desc="widen the mask by this much")
    shrink_mm = traits.Float(8.0, usedefault=True, desc="voxel size of the fitting grid")
    spline_distance_mm = traits.Float(200.0, usedefault=True, desc="B-spline control point spacing")
    iterations = traits.List(traits.Int, minlen=1, desc="iterations per fitting level (default: N4's usual four "
                                                        "levels of 50)")


class _N4OutputSpec(_TimedOutputSpec):
    out_file = File(exists=True, desc="bias-corrected T1w, float32")


class N4BiasCorrection(_TimedInterface):
    """N4 bias-field correction (:func:`hcld_bids.preproc.bias.n4_correct`)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        from ..preproc._ants import set_ants_threads
        from ..preproc.bias import n4_correct

        set_ants_threads(self.inputs.num_threads)
        img = nib.load(self.inputs.in_file)
        mask = None
        if isdefined(self.inputs.mask_file):
            mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        extra = {"iterations": tuple(self.inputs.iterations)} if isdefined(self.inputs.iterations) else {}
        corrected = n4_correct(
            img, mask=mask, mask_dilation_mm=self.inputs.mask_dilation_mm,
            shrink_mm=self.inputs.shrink_mm, spline_distance_mm=self.inputs.spline_distance_mm, **extra,
        )
        self._results["out_file"] = _save(corrected, runtime.cwd, "t1w_n4.nii.gz")
        return runtime


# --- registration and resampling ----------------------------------------------------------------

class _RegisterInputSpec(_ThreadsInputSpec):
    moving_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    template_file = File(exists=True, mandatory=True, desc="template T1w (whole head)")
    registration = traits.Enum("affine", "syn", usedefault=True, desc="transform model")
    random_seed = traits.Int(20240917, usedefault=True, desc="seed of ANTs' metric sampling")
    sloppy = traits.Bool(desc="testing only: the fast, coarse recipe")


class _RegisterOutputSpec(_TimedOutputSpec):
    warped_file = File(exists=True, desc="moving image on the template grid")
    forward_transform = File(exists=True, desc="T1w -> template (.mat affine or .h5 composite)")
    inverse_transform = File(exists=True, desc="template -> T1w (.mat affine or .h5 composite)")


class RegisterToTemplate(_TimedInterface):
    """ANTs registration to the template (:func:`hcld_bids.preproc.registration.register_to_template`)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from ..preproc._ants import set_ants_threads
        from ..preproc.registration import register_to_template

        set_ants_threads(self.inputs.num_threads)
        result = register_to_template(
            nib.load(self.inputs.moving_file), nib.load(self.inputs.template_file), runtime.cwd,
            registration=self.inputs.registration, random_seed=self.inputs.random_seed,
            sloppy=bool(self.inputs.sloppy) if isdefined(self.inputs.sloppy) else False,
        )
        self._results["warped_file"] = _save(result.warped, runtime.cwd, "t1w_warped.nii.gz")
        self._results["forward_transform"] = str(result.forward)
        self._results["inverse_transform"] = str(result.inverse)
        return runtime


class _ApplyTransformInputSpec(_ThreadsInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to resample")
    reference_file = File(exists=True, mandatory=True, desc="image whose grid the output takes")
    transform = File(exists=True, mandatory=True, desc="transform from in_file's space to the reference's")
    interpolation = traits.Enum("linear", "nearestNeighbor", "bSpline", "lanczosWindowedSinc",
                                usedefault=True, desc="ANTs interpolator")


class _ApplyTransformOutputSpec(_TimedOutputSpec):
    out_file = File(exists=True, desc="resampled image, float32")


class ApplyTransform(_TimedInterface):
    """Resample an image through an ANTs transform
    (:func:`hcld_bids.preproc.registration.apply_transform`; ``to_native`` with the inverse)."""

    input_spec = _ApplyTransformInputSpec
    output_spec = _ApplyTransformOutputSpec

    def _run_interface(self, runtime):
        from ..preproc._ants import set_ants_threads
        from ..preproc.registration import apply_transform

        set_ants_threads(self.inputs.num_threads)
        out = apply_transform(
            nib.load(self.inputs.in_file), nib.load(self.inputs.reference_file),
            self.inputs.transform, interpolation=self.inputs.interpolation,
        )
        self._results["out_file"] = _save(out, runtime.cwd, "resampled.nii.gz")
        return runtime


class _MaskToNativeInputSpec(_ThreadsInputSpec):
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the template grid")
    transform = File(exists=True, mandatory=True, desc="template -> T1w transform")
    reference_file = File(exists=True, mandatory=True, desc="native T1w (RAS)")


class _MaskToNativeOutputSpec(_TimedOutputSpec):
    out_file = File(exists=True, desc="brain mask on the native grid (uint8)")


class MaskToNative(_TimedInterface):
    """Template-space mask -> native grid (:func:`hcld_bids.preproc.registration.mask_to_native`)."""

    input_spec = _MaskToNativeInputSpec
    output_spec = _MaskToNativeOutputSpec

    def _run_interface(self, runtime):
        from ..preproc._ants import set_ants_threads
        from ..preproc.registration import mask_to_native

        set_ants_threads(self.inputs.num_threads)
        reference = nib.load(self.inputs.reference_file)
        mask = mask_to_native(self.inputs.mask_file, self.inputs.transform, reference)
        self._results["out_file"] = _save(_mask_image(mask, reference), runtime.cwd, "brain_mask_native.nii.gz")
        return runtime


# --- brain mask, scaling, model grid ---------------------------------------------------------

class _RefineBrainMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w on the template grid")
    template_mask_file = File(exists=True, mandatory=True, desc="template brain mask")
    band_mm = traits.Float(4.0, usedefault=True, desc="band around the template outline to refine")


class _RefineBrainMaskOutputSpec(_TimedOutputSpec):
    out_file = File(exists=True, desc="subject brain mask on the template grid (uint8)")


class RefineBrainMask(_TimedInterface):
    """Template brain mask refined on the subject (:func:`hcld_bids.preproc.brainmask.refine_brain_mask`)."""

    input_spec = _RefineBrainMaskInputSpec
    output_spec = _RefineBrainMaskOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.brainmask import refine_brain_mask

        img = nib.load(self.inputs.in_file)
        template_mask = nib.load(self.inputs.template_mask_file)
        if not np.allclose(img.affine, template_mask.affine, atol=1e-3) or img.shape != template_mask.shape:
            raise ValueError(f"{self.inputs.in_file} is not on the grid of {self.inputs.template_mask_file}")
        mask = refine_brain_mask(
            np.asarray(img.dataobj), np.asarray(template_mask.dataobj),
            voxel_size_mm=float(min(img.header.get_zooms()[:3])), band_mm=self.inputs.band_mm,
        )
        self._results["out_file"] = _save(_mask_image(mask, template_mask), runtime.cwd, "brain_mask.nii.gz")
        return runtime


class _ScaleIntensityInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the same grid")
    low_percentile = traits.Float(0.5, usedefault=True, desc="brain percentile mapped to 0")
    high_percentile = traits.Float(99.5, usedefault=True, desc="brain percentile mapped to 1")
    source_file = traits.Str(desc="original T1w, named in error messages")


class _ScaleIntensityOutputSpec(_TimedOutputSpec):
    out_file = File(exists=True, desc="T1w scaled to [0, 1] (float32, whole image)")
    low = traits.Float(desc="intensity mapped to 0")
    high = traits.Float(desc="intensity mapped to 1")


class ScaleIntensity(_TimedInterface):
    """Robust [0, 1] scaling (:mod:`hcld_bids.preproc.intensity`)."""

    input_spec = _ScaleIntensityInputSpec
    output_spec = _ScaleIntensityOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.intensity import scale_intensity, scaling_reference

        img = nib.load(self.inputs.in_file)
        data = np.asarray(img.dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        source = self.inputs.source_file if isdefined(self.inputs.source_file) else self.inputs.in_file
        try:
            low, high = scaling_reference(data, mask, (self.inputs.low_percentile, self.inputs.high_percentile))
        except ValueError as exc:
            raise BadDataError(f"{source}: cannot scale intensities ({exc}); check that the image is a T1w of a head.") from exc
        scaled = _image(scale_intensity(data, low, high), img.affine, img, np.float32)
        self._results["out_file"] = _save(scaled, runtime.cwd, "t1w_scaled.nii.gz")
        self._results["low"] = low
        self._results["high"] = high
        return runtime


class _CropToGridInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="scaled T1w on the template grid")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the template grid")
    grid_shape = traits.Tuple(traits.Int, traits.Int, traits.Int, mandatory=True, desc="window shape")
    grid_start = traits.Tuple(traits.Int, traits.Int, traits.Int, mandatory=True, desc="window start index")


class _CropToGridOutputSpec(_TimedOutputSpec):
    out_file = File(exists=True, desc="brain-only T1w on the model grid (float32)")
    out_mask = File(exists=True, desc="brain mask on the model grid (uint8)")


class CropToGrid(_TimedInterface):
    """Brain-only model input: mask, then cut the model window (:mod:`hcld_bids.preproc.grid`)."""

    input_spec = _CropToGridInputSpec
    output_spec = _CropToGridOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.grid import GridSpec, crop_to_grid, grid_affine

        grid = GridSpec(shape=self.inputs.grid_shape, start=self.inputs.grid_start)
        img = nib.load(self.inputs.in_file)
        mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        brain = np.where(mask, np.asarray(img.dataobj, dtype=np.float32), 0).astype(np.float32)
        affine = grid_affine(img.affine, grid)
        out = _image(crop_to_grid(brain, grid), affine, img, np.float32)
        out_mask = _image(crop_to_grid(mask.astype(np.uint8), grid), affine, img, np.uint8)
        self._results["out_file"] = _save(out, runtime.cwd, "t1w_model_grid.nii.gz")
        self._results["out_mask"] = _save(out_mask, runtime.cwd, "brain_mask_model_grid.nii.gz")
        return runtime
