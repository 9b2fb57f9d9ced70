"""Harmonization of one preprocessed T1w: HCLD on the model grid, back to the template grid, and
optionally back to the native T1w grid."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.harmonize import HarmonizeT1w, ToTemplateGrid
from ..interfaces.preproc import ApplyTransform

#: Outputs of :func:`init_harmonization_wf` (fields of its ``outputnode``).
OUTPUT_FIELDS = [
    "harmonized_model",     # model grid
    "harmonized_template",  # full template grid, same units as the preprocessed T1w
    "harmonized_native",    # native T1w grid (only when ``native`` is set)
    "style",                # "site:<label>" or "reference:<sha256>"
    "device",
    "wall_time",
    "timings",
]


def harmonize_mem_gb(grid_shape, base_channels: int = 32) -> float:
    """Peak memory (GB) of one harmonization on the CPU, from the benchmark figures: about 1.3 GB for the
    default network at 80x96x80 and 3.7 GB at 160x192x160, scaling with the full-resolution activations."""
    voxels = float(grid_shape[0]) * grid_shape[1] * grid_shape[2]
    return round(0.6 + 0.6e-6 * voxels * base_channels / 32, 1)


def init_harmonization_wf(*, model, target_site: str | None, inversion_steps: int, sampling_steps: int,
                          seed: int, device: str, omp_nthreads: int, native: bool, label: str = "",
                          name: str = "harmonization_wf") -> pe.Workflow:
    """Harmonize one preprocessed T1w.

    Parameters
    ----------
    model
        :class:`hcld_bids.workflows.base.ModelInfo` of the bundle (path, digest, grid, template file).
    target_site
        Target site label (a prototype of the bundle); ``None`` when a reference image is connected.
    inversion_steps, sampling_steps, seed, device
        DDIM settings, random seed and torch device of :class:`~hcld_bids.interfaces.harmonize.HarmonizeT1w`.
    omp_nthreads
        torch threads; the node declares them (``n_procs``) and its memory (``mem_gb``) to nipype.
    native
        Also resample the harmonized image onto the native T1w grid.

    Inputs
    ------
    model_t1w, model_mask
        Model-grid brain-only T1w and brain mask (from the anatomical preprocessing).
    reference_t1w
        Model-grid reference volume, when harmonizing toward a reference image.
    native_ref, xfm_tpl2t1w
        Native T1w grid and template -> T1w transform (used when ``native``).

    Outputs
    -------
    See :data:`OUTPUT_FIELDS`.
    """
    workflow = pe.Workflow(name=name)
    target = f"the style prototype of site {target_site}" if target_site else "the style of a reference image"
    workflow.__desc__ = (
        f"The preprocessed brain was harmonized toward {target} with HCLD [@hcld]: it was encoded by a 3D "
        "autoencoder into a latent map, whose channel statistics were matched to those of the target style "
        f"(AdaIN [@adain]), inverted to noise with {inversion_steps} deterministic DDIM steps [@ddim] and "
        f"regenerated with {sampling_steps} DDIM steps of a latent diffusion model [@ldm] conditioned on the "
        "target style, then decoded back into an image."
    )

    inputnode = pe.Node(niu.IdentityInterface(
        fields=["model_t1w", "model_mask", "reference_t1w", "native_ref", "xfm_tpl2t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")

    threads = max(1, int(omp_nthreads))
    harmonize = pe.Node(
        HarmonizeT1w(model_dir=str(model.path), model_sha256=model.sha256, inversion_steps=inversion_steps,
                     sampling_steps=sampling_steps, seed=seed, device=device, num_threads=threads, label=label),
        name="harmonize", n_procs=threads, mem_gb=model.mem_gb)
    if target_site:
        harmonize.inputs.target_site = target_site
    to_template = pe.Node(
        ToTemplateGrid(template_file=str(model.template_file), grid_shape=model.grid.shape,
                       grid_start=model.grid.start),
        name="to_template", mem_gb=0.3)

    workflow.connect([
        (inputnode, harmonize, [("model_t1w", "in_file"), ("model_mask", "mask_file")]),
        (harmonize, to_template, [("out_file", "in_file")]),
        (harmonize, outputnode, [("out_file", "harmonized_model"), ("style", "style"), ("device", "device"),
                                 ("wall_time", "wall_time"), ("timings", "timings")]),
        (to_template, outputnode, [("out_file", "harmonized_template")]),
    ])
    if not target_site:
        workflow.connect(inputnode, "reference_t1w", harmonize, "reference_file")
    if native:
        to_native = pe.Node(ApplyTransform(num_threads=threads), name="to_native", n_procs=threads, mem_gb=1.0)
        workflow.connect([
            (to_template, to_native, [("out_file", "in_file")]),
            (inputnode, to_native, [("native_ref", "reference_file"), ("xfm_tpl2t1w", "transform")]),
            (to_native, outputnode, [("out_file", "harmonized_native")]),
        ])
    return workflow
