"""Anatomical preprocessing workflow: one T1w in, template-space and model-grid images out."""

from __future__ import annotations

import nibabel as nib
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..errors import BadDataError
from ..interfaces.preproc import (
    ApplyTransform,
    CropToGrid,
    MaskToNative,
    N4BiasCorrection,
    RefineBrainMask,
    RegisterToTemplate,
    ScaleIntensity,
    ValidateT1w,
)
from ..preproc import bias
from ..preproc.brainmask import DEFAULT_BAND_MM
from ..preproc.grid import GridSpec
from ..preproc.intensity import DEFAULT_PERCENTILES
from ..preproc.registration import SLOPPY_REGISTRATIONS
from ..templates import check_templates

#: Outputs of :func:`init_anat_preproc_wf` (fields of its ``outputnode``).
OUTPUT_FIELDS = [
    "t1w_preproc",        # template grid: N4, registered, scaled to [0, 1], not skull-stripped
    "brain_mask",         # template grid: subject brain mask (uint8)
    "model_t1w",          # model grid: brain-only scaled T1w, what the model consumes
    "model_mask",         # model grid: brain mask
    "xfm_t1w2tpl",        # T1w -> template transform (.mat affine / .h5 composite for SyN)
    "xfm_tpl2t1w",        # template -> T1w transform (for ``to_native``)
    "brain_mask_native",  # native grid: brain mask (uint8)
    "scale_low",          # intensity mapped to 0 (undo: x = low + y * (high - low))
    "scale_high",         # intensity mapped to 1
    "native_ref",         # native grid: the validated T1w reoriented to RAS
    "t1w_n4_native",      # native grid: bias-corrected T1w (float32)
    "preprocessing_seconds",  # wall time of the steps above, summed (each step's own, also when reused)
]

#: The preprocessing nodes whose ``seconds`` add up to ``preprocessing_seconds``.
_TIMED_NODES = ("validate", "n4_head", "register", "mask_first", "mask_first_native", "n4_brain", "to_template",
                "brain_mask", "brain_mask_native", "scale", "crop")


def _sum_seconds(**seconds) -> float:
    return round(float(sum(seconds.values())), 3)

#: Rough memory peaks (GB) of the ANTs steps at TemplateFlow resolutions 1 and 2 (>= 2).
_MEM_GB = {1: {"n4": 2.0, "reg": 3.0, "resample": 1.5, "mask": 1.0},
           2: {"n4": 1.0, "reg": 1.0, "resample": 0.5, "mask": 0.3}}


def _methods_text(template: str, resolution: int, registration: str, voxel_mm: float, sloppy: bool = False) -> str:
    from ..preproc._ants import ants_version, antspyx_version

    reg = ("an affine transform (rigid, then affine stages; mutual information; the affine refined at the "
           "template's full resolution)"
           if registration == "affine"
           else "an affine transform followed by a symmetric diffeomorphic (SyN) deformation")
    low, high = DEFAULT_PERCENTILES
    sloppy_text = (f"""\
This run used low-quality preprocessing meant for testing (--sloppy): N4 with
{bias.SLOPPY_ITERATIONS[0]} iterations per level and ANTsPy's {SLOPPY_REGISTRATIONS[registration]} recipe
for the registration; its outputs are not fit for analysis.
""" if sloppy else "")
    return sloppy_text + f"""\
The T1-weighted (T1w) image was checked (3D, finite, non-empty, plausible voxel size), reoriented
to RAS and corrected for intensity non-uniformity with N4 [@n4] (ANTs {ants_version()}, through
ANTsPy {antspyx_version()}), first within a rough head mask. It was registered to the
{template} template (TemplateFlow [@templateflow], {voxel_mm:g} mm) with {reg} [@ants].
The template brain mask, refined on the subject's intensities near its outline (Otsu threshold,
{DEFAULT_BAND_MM:g} mm band), was brought back to the T1w, within which N4 was run again. The
corrected image was resampled into template space (linear interpolation) and its intensities scaled
to [0, 1] between the {low:g}th and {high:g}th percentiles inside the brain mask.
"""


def init_anat_preproc_wf(*, template: str, resolution: int, grid: GridSpec,
                         registration: str = "affine", omp_nthreads: int = 1, sloppy: bool = False,
                         name: str = "anat_preproc_wf") -> pe.Workflow:
    """Preprocess one T1w for harmonization.

    Workflow graph: validate -> N4 (head) -> register -> brain mask (template) -> mask to native
    -> N4 (brain) -> resample to template -> brain mask (template, again) -> scale -> crop.

    Parameters
    ----------
    template, resolution
        TemplateFlow template and resolution index; the files must be installed
        (:func:`hcld_bids.templates.check_templates` runs here, so a missing template fails before
        anything runs).
    grid
        Model window on the template grid (:func:`hcld_bids.preproc.grid.model_grid` or the
        model bundle's).
    registration
        ``"affine"`` or ``"syn"``.
    omp_nthreads
        Threads of each ANTs step; nodes declare them as ``n_procs``.
    sloppy
        Testing only (``--sloppy``): fewer N4 iterations and a fast, coarse registration.

    Inputs
    ------
    t1w
        A T1w NIfTI file.

    Outputs
    -------
    See :data:`OUTPUT_FIELDS`: template-grid ``t1w_preproc`` and ``brain_mask``, model-grid
    ``model_t1w`` and ``model_mask``, transforms ``xfm_t1w2tpl`` and ``xfm_tpl2t1w``,
    ``brain_mask_native``, ``scale_low``/``scale_high``, ``native_ref`` and ``t1w_n4_native``.
    """
    if registration not in ("affine", "syn"):
        raise ValueError(f"registration must be 'affine' or 'syn', not {registration!r}")
    files = check_templates(template, resolution)
    template_img = nib.load(files["T1w"])
    if nib.aff2axcodes(template_img.affine) != ("R", "A", "S"):
        raise BadDataError(
            f"{files['T1w']}: template is not stored in RAS orientation; install TemplateFlow's "
            "original file (python -m hcld_bids.fetch_templates)."
        )
    voxel_mm = float(min(template_img.header.get_zooms()[:3]))
    mem = _MEM_GB[1 if voxel_mm < 1.5 else 2]
    threads = max(1, int(omp_nthreads))

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _methods_text(template, resolution, registration, voxel_mm, sloppy)

    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")

    validate = pe.Node(ValidateT1w(), name="validate", mem_gb=mem["mask"])
    n4_head = pe.Node(
        N4BiasCorrection(shrink_mm=bias.DEFAULT_SHRINK_MM,
                         spline_distance_mm=bias.DEFAULT_SPLINE_DISTANCE_MM, num_threads=threads),
        name="n4_head", n_procs=threads, mem_gb=mem["n4"])
    register = pe.Node(
        RegisterToTemplate(template_file=str(files["T1w"]), registration=registration, num_threads=threads),
        name="register", n_procs=threads, mem_gb=mem["reg"])
    mask_first = pe.Node(RefineBrainMask(template_mask_file=str(files["brain_mask"])),
                         name="mask_first", mem_gb=mem["mask"])
    mask_first_native = pe.Node(MaskToNative(num_threads=threads), name="mask_first_native",
                                n_procs=threads, mem_gb=mem["resample"])
    n4_brain = pe.Node(
        N4BiasCorrection(shrink_mm=bias.BRAIN_SHRINK_MM,
                         spline_distance_mm=bias.BRAIN_SPLINE_DISTANCE_MM,
                         mask_dilation_mm=bias.BRAIN_MASK_DILATION_MM, num_threads=threads),
        name="n4_brain", n_procs=threads, mem_gb=mem["n4"])
    to_template = pe.Node(ApplyTransform(reference_file=str(files["T1w"]), num_threads=threads),
                          name="to_template", n_procs=threads, mem_gb=mem["resample"])
    brain_mask = pe.Node(RefineBrainMask(template_mask_file=str(files["brain_mask"])),
                         name="brain_mask", mem_gb=mem["mask"])
    brain_mask_native = pe.Node(MaskToNative(num_threads=threads), name="brain_mask_native",
                                n_procs=threads, mem_gb=mem["resample"])
    if sloppy:
        n4_head.inputs.iterations = list(bias.SLOPPY_ITERATIONS)
        n4_brain.inputs.iterations = list(bias.SLOPPY_ITERATIONS)
        register.inputs.sloppy = True
    scale = pe.Node(ScaleIntensity(), name="scale", mem_gb=mem["mask"])
    crop = pe.Node(CropToGrid(grid_shape=grid.shape, grid_start=grid.start), name="crop",
                   mem_gb=mem["mask"])

    workflow.connect([
        (inputnode, validate, [("t1w", "in_file")]),
        (inputnode, scale, [("t1w", "source_file")]),
        (validate, n4_head, [("out_file", "in_file")]),
        (n4_head, register, [("out_file", "moving_file")]),
        (register, mask_first, [("warped_file", "in_file")]),
        (mask_first, mask_first_native, [("out_file", "mask_file")]),
        (register, mask_first_native, [("inverse_transform", "transform")]),
        (validate, mask_first_native, [("out_file", "reference_file")]),
        (validate, n4_brain, [("out_file", "in_file")]),
        (mask_first_native, n4_brain, [("out_file", "mask_file")]),
        (n4_brain, to_template, [("out_file", "in_file")]),
        (register, to_template, [("forward_transform", "transform")]),
        (to_template, brain_mask, [("out_file", "in_file")]),
        (brain_mask, brain_mask_native, [("out_file", "mask_file")]),
        (register, brain_mask_native, [("inverse_transform", "transform")]),
        (validate, brain_mask_native, [("out_file", "reference_file")]),
        (to_template, scale, [("out_file", "in_file")]),
        (brain_mask, scale, [("out_file", "mask_file")]),
        (scale, crop, [("out_file", "in_file")]),
        (brain_mask, crop, [("out_file", "mask_file")]),
        (scale, outputnode, [("out_file", "t1w_preproc"),
                             ("low", "scale_low"),
                             ("high", "scale_high")]),
        (brain_mask, outputnode, [("out_file", "brain_mask")]),
        (crop, outputnode, [("out_file", "model_t1w"), ("out_mask", "model_mask")]),
        (register, outputnode, [("forward_transform", "xfm_t1w2tpl"),
                                ("inverse_transform", "xfm_tpl2t1w")]),
        (brain_mask_native, outputnode, [("out_file", "brain_mask_native")]),
        (validate, outputnode, [("out_file", "native_ref")]),
        (n4_brain, outputnode, [("out_file", "t1w_n4_native")]),
    ])
    timing = pe.Node(niu.Function(function=_sum_seconds, input_names=list(_TIMED_NODES),
                                  output_names=["seconds"]), name="preprocessing_time", run_without_submitting=True)
    workflow.connect([(workflow.get_node(name), timing, [("seconds", name)]) for name in _TIMED_NODES])
    workflow.connect(timing, "seconds", outputnode, "preprocessing_seconds")
    return workflow
