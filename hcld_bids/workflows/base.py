"""The participant-level graph: one sub-workflow per participant, one per T1w inside it.

:func:`init_hcld_wf` is what :mod:`hcld_bids.levels.participant` runs; :func:`init_single_t1w_wf` wires the
anatomical preprocessing, the harmonization, the quality control and the outputs of one T1w. The naming
helpers are shared with the train level's preprocessing graph, so that both levels name their nodes alike
and a participant run reuses the preprocessing cached by a train run in the same work directory.

Nothing here opens the model, checks inputs or runs a workflow (that is :mod:`hcld_bids.levels`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from copy import deepcopy


def _safe_name(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", "_".join(str(p) for p in parts if p not in (None, "", False))).strip("_")


def _t1w_label(record) -> str:
    ents = [f"sub-{record.subject}"]
    for key, short in (("session", "ses"), ("acquisition", "acq"), ("reconstruction", "rec"), ("run", "run")):
        value = record.entities.get(key)
        if value not in (None, ""):
            ents.append(f"{short}-{value}")
    return "_".join(ents)


def subject_wf_name(subject: str) -> str:
    return f"sub_{_safe_name(subject)}_wf"


def t1w_wf_name(record) -> str:
    """Name of a T1w's sub-workflow; the train level uses the same names, so that a participant run in the
    same work directory reuses the preprocessing done for training."""
    return _safe_name("t1w", record.session and f"ses_{record.session}",
                      record.acquisition and f"acq_{record.acquisition}",
                      record.entities.get("reconstruction") and f"rec_{record.entities['reconstruction']}",
                      record.run is not None and f"run_{record.run}") + "_wf"


def _subject_execution(config, subject: str) -> dict:
    """nipype ``execution`` settings of a participant's sub-workflow: its crash files go to
    ``OUTPUT_DIR/sub-<label>/log/<run uuid>/`` (as in fMRIPrep)."""
    return {
        "crashdump_dir": str(config.execution.output_dir / f"sub-{subject}" / "log" / config.execution.run_uuid),
        "crashfile_format": "txt",
        "stop_on_first_crash": bool(config.nipype.stop_on_first_crash),
        "remove_unnecessary_outputs": False,
        "hash_method": "content",
    }


def _provenance(static, style, device, wall_time, timings, low, high, preprocessing=None, restoration=None):
    """The "HCLD" block of the harmonized image's sidecar (``restoration``: the weight the image's restoration
    ran with and its estimated noise, from the harmonization)."""
    block = dict(static)
    if restoration:
        block["InputRestoration"] = float(restoration["weight"])
        if restoration.get("noise") is not None:
            block["InputNoiseEstimate"] = round(float(restoration["noise"]), 5)
    block["StylePrototype"] = style
    block["Device"] = device
    scaling = dict(block.pop("IntensityScaling", {}))
    scaling.update({"low": float(low), "high": float(high)})
    block["IntensityScaling"] = scaling
    block["WallTimeSeconds"] = {"harmonization": float(wall_time), **{k: float(v) for k, v in timings.items()}}
    if preprocessing is not None:
        block["WallTimeSeconds"]["preprocessing"] = float(preprocessing)
    return block


def _regime_provenance(regime: dict, reference: bool = False, target_images: int = 1,
                       target_added: bool = False) -> dict:
    """Sidecar keys of the inference regime: its kind, strength, DDIM steps and post-processing (toward a
    reference image when ``reference``; ``target_images``: how many images the target site's histogram and
    spectrum average; ``target_added``: the site was added without training, so its histogram's calibration is
    partial, as a reference's)."""
    from ..model.harmonize import Regime

    parsed = Regime.from_dict(regime)
    images = 1 if reference else target_images
    heads = images if reference or target_added else None  # None: a trained site, calibrated fully
    calls = {"sdedit": (None, regime["sampling_steps"]), "adain": (None, None), "research": (30, 10)}
    inversion, sampling = calls.get(regime["kind"], (regime["inversion_steps"], regime["sampling_steps"]))
    return {
        "InferenceRegime": regime["kind"],
        "HarmonizationStrength": float(regime["strength"]),
        "DDIMInversionSteps": inversion,
        "DDIMSamplingSteps": sampling,
        # gain of the input detail added back (the regime's reference_detail, when set, toward a reference image or
        # a site added without training)
        "DetailReinjection": parsed.detail_gain(heads is not None),
        "IntensityCalibration": bool(regime.get("calibrate")),
        # 1: the brain histogram mapped onto the target's (a trained site); below 1 blended with the unmapped
        # output (a reference image, a site added from few images)
        "IntensityCalibrationWeight": parsed.calibration_weight(heads),
        # exponent of the spectral calibration (0: none): band powers moved toward the target's power spectrum
        "SpectralCalibration": parsed.spectrum_exponent(images),
        # weight of the restoration prior's correction on the input (0: none); with the regime's restore_noisy each
        # image's own weight (from its estimated noise) replaces it in _provenance
        "InputRestoration": float(regime.get("restore") or 0.0),
        "Regime": dict(regime),
    }


def static_provenance(config, model, record, device: str) -> dict:
    """Provenance keys known before the workflow runs."""
    import platform

    import torch

    from .. import __version__
    from ..model.harmonize import added_site_images, site_images
    from ..templates import is_shipped
    from .harmonization import inference_regime

    reference = config.workflow.reference_image
    spec = model.manifest.get("preprocessing", {})
    scaling = spec.get("intensity_scaling", {})
    return {
        "ModelName": model.name,
        "ModelSHA256": model.sha256,
        "ModelPath": str(model.path),
        # the networks of the demo model shipped with hcld-bids: for trying the app, not for research
        "DemoModel": bool(getattr(model, "demo", False)),
        "SourceSite": record.site,
        "SiteSource": record.site_source,
        "TargetSite": config.workflow.target_site,
        # an image already at the target site is harmonized like every other (one processing for all); the
        # reports say so and show how much it changed
        "SourceIsTarget": bool(config.workflow.target_site) and record.site == config.workflow.target_site,
        "ReferenceImage": str(reference) if reference else None,
        **_regime_provenance(inference_regime(model.manifest, config.workflow), reference=bool(reference),
                             target_images=site_images(model.manifest, config.workflow.target_site),
                             target_added=added_site_images(model.manifest, config.workflow.target_site) is not None),
        "RandomSeed": int(config.workflow.random_seed),
        "RequestedDevice": config.workflow.device,
        "Template": model.template,
        "TemplateSource": "hcld-bids (shipped copy)" if is_shipped(model.template_file) else "TemplateFlow",
        "TemplateResolution": model.resolution,
        "Registration": model.registration,
        **({"SloppyPreprocessing": True} if config.workflow.sloppy else {}),
        "IntensityScaling": {"method": scaling.get("method", "percentile"),
                             "low_percentile": scaling.get("low_percentile"),
                             "high_percentile": scaling.get("high_percentile")},
        "Versions": {"hcld-bids": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "RunUUID": config.execution.run_uuid,
    }


#: Anatomical results the steps after the preprocessing use (fields of the anatomical workflow's outputnode).
_ANAT_RESULTS = ["model_t1w", "model_mask", "native_ref", "xfm_tpl2t1w", "xfm_t1w2tpl", "t1w_preproc", "brain_mask",
                 "scale_low", "scale_high", "preprocessing_seconds"]


def _add_after_preprocessing(workflow, config, model, record, device: str, inputnode, anat, prefix: str,
                             batched: bool) -> None:
    """Add to ``workflow`` what follows one T1w's preprocessing: harmonization (with ``batched``, only its
    per-image part: the batch node hands in the fields of :data:`~.harmonization.BATCH_FIELDS` through
    ``inputnode``), QC, provenance and outputs. The anatomical results are the fields ``prefix + name`` of
    ``anat``; ``inputnode`` has ``t1w``, ``reference_t1w`` and ``reference_mask``."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from ..interfaces.harmonize import ItkTransform
    from .harmonization import BATCH_FIELDS, inference_regime, init_harmonization_wf
    from .outputs import init_outputs_wf
    from .qc import init_qc_wf

    omp = config.nipype.omp_nthreads
    native = config.workflow.native_output
    harm = init_harmonization_wf(
        model=model, target_site=config.workflow.target_site,
        regime=inference_regime(model.manifest, config.workflow), seed=config.workflow.random_seed, device=device,
        omp_nthreads=omp, native=native, label=_t1w_label(record), batched=batched)
    qc = init_qc_wf(model=model, target_site=config.workflow.target_site)
    xfm = pe.Node(ItkTransform(), name="itk_xfm", mem_gb=0.1)
    provenance = pe.Node(niu.Function(
        function=_provenance, input_names=["static", "style", "device", "wall_time", "timings", "low", "high",
                                       "preprocessing", "restoration"],
        output_names=["provenance"]), name="provenance", run_without_submitting=True)
    provenance.inputs.static = static_provenance(config, model, record, device)
    outputs = init_outputs_wf(output_dir=config.execution.output_dir, bids_dir=config.execution.bids_dir,
                              template=model.template, resolution=model.resolution, native=native)

    def a(field):
        return prefix + field

    workflow.connect([
        (anat, harm, [(a("model_t1w"), "inputnode.model_t1w"), (a("model_mask"), "inputnode.model_mask"),
                      (a("native_ref"), "inputnode.native_ref"), (a("xfm_tpl2t1w"), "inputnode.xfm_tpl2t1w")]),
        (inputnode, harm, [("reference_t1w", "inputnode.reference_t1w")]),
        (anat, qc, [(a("t1w_preproc"), "inputnode.t1w_preproc"), (a("brain_mask"), "inputnode.brain_mask")]),
        (harm, qc, [("outputnode.harmonized_template", "inputnode.harmonized")]),
        (inputnode, qc, [("reference_t1w", "inputnode.reference_t1w"),
                         ("reference_mask", "inputnode.reference_mask")]),
        (anat, xfm, [(a("xfm_t1w2tpl"), "in_file")]),
        (harm, provenance, [("outputnode.style", "style"), ("outputnode.device", "device"),
                            ("outputnode.wall_time", "wall_time"), ("outputnode.timings", "timings"),
                            ("outputnode.restoration", "restoration")]),
        (anat, provenance, [(a("scale_low"), "low"), (a("scale_high"), "high"),
                            (a("preprocessing_seconds"), "preprocessing")]),
        (inputnode, outputs, [("t1w", "inputnode.source_file")]),
        (anat, outputs, [(a("t1w_preproc"), "inputnode.t1w_preproc"), (a("brain_mask"), "inputnode.brain_mask")]),
        (harm, outputs, [("outputnode.harmonized_template", "inputnode.harmonized_template"),
                         ("outputnode.harmonized_native", "inputnode.harmonized_native")]),
        (xfm, outputs, [("out_file", "inputnode.xfm_t1w2tpl")]),
        (provenance, outputs, [("provenance", "inputnode.provenance")]),
        (qc, outputs, [("outputnode.qc", "inputnode.qc")]),
    ])
    if batched:
        workflow.connect([(inputnode, harm, [(field, f"inputnode.{field}") for field in BATCH_FIELDS])])


def _t1w_inputnode(record, extra=()):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w", "reference_t1w", "reference_mask", *extra]),
                        name="inputnode")
    inputnode.inputs.t1w = str(record.path)
    return inputnode


def init_single_t1w_wf(config, model, record, device: str, name: str, preprocessing_only: bool = False):
    """Preprocess, harmonize and write the outputs of one T1w.

    ``preprocessing_only``: the anatomical preprocessing alone (the CUDA graph: the rest of the image's steps
    sit in its participant's batch workflow, :func:`init_t1w_after_batch_wf`); its nodes have the same names and
    paths as in the whole workflow, so the work directory's preprocessing serves both.
    """
    from nipype.pipeline import engine as pe

    from .anatomical import init_anat_preproc_wf

    workflow = pe.Workflow(name=name)
    inputnode = _t1w_inputnode(record)
    anat = init_anat_preproc_wf(template=model.template, resolution=model.resolution, grid=model.grid,
                                registration=model.registration, omp_nthreads=config.nipype.omp_nthreads,
                                sloppy=config.workflow.sloppy)
    workflow.connect(inputnode, "t1w", anat, "inputnode.t1w")
    if not preprocessing_only:
        _add_after_preprocessing(workflow, config, model, record, device, inputnode, anat, "outputnode.",
                                 batched=False)
    return workflow


def init_t1w_after_batch_wf(config, model, record, device: str, name: str):
    """What follows the harmonization of one T1w harmonized in its participant's batch (CUDA): the harmonized
    image on the template (and native) grid, QC, provenance and outputs. Its ``inputnode`` takes the image's
    anatomical results (:data:`_ANAT_RESULTS`), its results of the batch node
    (:data:`~.harmonization.BATCH_FIELDS`) and the reference image's, if any."""
    from nipype.pipeline import engine as pe

    from .harmonization import BATCH_FIELDS

    workflow = pe.Workflow(name=name)
    inputnode = _t1w_inputnode(record, extra=[*_ANAT_RESULTS, *BATCH_FIELDS])
    _add_after_preprocessing(workflow, config, model, record, device, inputnode, inputnode, "", batched=True)
    return workflow


def init_hcld_wf(config, records, model, device: str):
    """The participant-level workflow: one sub-workflow per participant, one per T1w inside it.

    On CUDA (:func:`~.harmonization.batches_harmonization`) a participant's T1w images are harmonized together
    by one batch node (:func:`~.harmonization.init_harmonize_batch_wf`), which hands each T1w's workflow its
    image; on the CPU each T1w has its own harmonization node. With ``--reference-image``, the reference is
    preprocessed once and feeds every harmonization. Crash files of a participant's nodes go to
    ``OUTPUT_DIR/sub-<label>/log/<run uuid>/``.
    """
    from nipype.pipeline import engine as pe

    from .anatomical import init_anat_preproc_wf
    from .harmonization import _pick, batches_harmonization, inference_regime, init_harmonize_batch_wf

    workflow = pe.Workflow(name="hcld_bids_wf", base_dir=str(config.execution.work_dir))
    reference_wf = None
    if config.workflow.reference_image:
        reference_wf = init_anat_preproc_wf(template=model.template, resolution=model.resolution, grid=model.grid,
                                            registration=model.registration, omp_nthreads=config.nipype.omp_nthreads,
                                            sloppy=config.workflow.sloppy, name="reference_preproc_wf")
        reference_wf.inputs.inputnode.t1w = str(config.workflow.reference_image)

    by_subject = defaultdict(list)
    for record in records:
        by_subject[record.subject].append(record)
    batched = batches_harmonization(device)
    for subject, subject_records in sorted(by_subject.items()):
        subject_wf = pe.Workflow(name=subject_wf_name(subject))
        subject_wf.config["execution"] = _subject_execution(config, subject)
        t1w_wfs = [init_single_t1w_wf(config, model, record, device, name=t1w_wf_name(record),
                                      preprocessing_only=batched) for record in subject_records]
        subject_wf.add_nodes(t1w_wfs)
        targets = t1w_wfs  # the workflows that take the reference image
        batch_wf = None
        if batched:
            # The images' preprocessing (t1w_wf, as on the CPU) -> one batch node -> each image's remaining steps.
            # Those sit inside the batch workflow: a workflow both feeding and fed by the batch would be a cycle.
            batch_wf = init_harmonize_batch_wf(
                model=model, target_site=config.workflow.target_site,
                regime=inference_regime(model.manifest, config.workflow), seed=config.workflow.random_seed,
                device=device, omp_nthreads=config.nipype.omp_nthreads,
                labels=[_t1w_label(r) for r in subject_records])
            targets = []
            for index, (record, t1w_wf) in enumerate(zip(subject_records, t1w_wfs)):
                after = init_t1w_after_batch_wf(config, model, record, device, name=t1w_wf.name)
                batch_wf.connect([(batch_wf.get_node("harmonize"), after, [
                    (("out_files", _pick, index), "inputnode.harmonized_model"),
                    (("wall_times", _pick, index), "inputnode.wall_time"),
                    (("timings", _pick, index), "inputnode.timings"),
                    (("restoration", _pick, index), "inputnode.restoration"),
                    ("style", "inputnode.style"), ("device", "inputnode.device")])])
                subject_wf.connect([(t1w_wf, batch_wf, [
                    ("anat_preproc_wf.outputnode.model_t1w", f"merge_t1w.in{index + 1}"),
                    ("anat_preproc_wf.outputnode.model_mask", f"merge_mask.in{index + 1}"),
                    *[(f"anat_preproc_wf.outputnode.{field}", f"{after.name}.inputnode.{field}")
                      for field in _ANAT_RESULTS]])])
                targets.append(after)
        for node in subject_wf._get_all_nodes():
            node.config = deepcopy(subject_wf.config)
        workflow.add_nodes([subject_wf])
        if reference_wf is not None:
            prefix = f"{batch_wf.name}." if batch_wf is not None else ""
            for record_wf in targets:
                workflow.connect(reference_wf, "outputnode.model_t1w",
                                 subject_wf, f"{prefix}{record_wf.name}.inputnode.reference_t1w")
                workflow.connect(reference_wf, "outputnode.model_mask",
                                 subject_wf, f"{prefix}{record_wf.name}.inputnode.reference_mask")
            if batch_wf is not None:
                workflow.connect(reference_wf, "outputnode.model_t1w",
                                 subject_wf, f"{batch_wf.name}.inputnode.reference_t1w")
    return workflow
