"""Top of the workflow layer: the model, the participant workflow, and :func:`run_level`.

:func:`run_level` is the single entry point the command line calls once the inputs are checked and the
T1w images selected. For the participant level it

1. opens the model bundle (hashes checked), checks that its preprocessing matches this pipeline, that the
   templates it needs are installed and that the target site is one of its sites;
2. checks every selected T1w (3D, finite, non-empty, sane voxels) before anything runs, so bad data ends
   the run with one line and exit code 65 instead of a crashed node;
3. builds one nipype workflow (one sub-workflow per participant, one per T1w inside it) and runs it with
   the configured plugin, crash files under ``OUTPUT_DIR/sub-<label>/log/<run uuid>/``;
4. writes the participant reports and the methods boilerplate.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import defaultdict
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

from ..bids.atomic import remove_stale_temporaries
from ..errors import BadDataError, CannotCreateOutputError, HCLDError, MissingInputError, UsageError

LOGGER = logging.getLogger("hcld_bids")


@dataclass(frozen=True)
class ModelInfo:
    """What the workflows need to know about the model bundle (the networks stay unloaded here)."""

    path: Path
    name: str
    sha256: str
    sites: tuple
    template: str
    resolution: int
    registration: str
    grid: object           # hcld_bids.preproc.grid.GridSpec
    template_file: Path    # template T1w on the full template grid
    mem_gb: float          # memory one harmonization needs
    manifest: dict


def model_error(err: Exception) -> HCLDError:
    """Map an exception of :mod:`hcld_bids.model` to the exit code of the BIDS execution spec."""
    from ..model.errors import BundleNotFoundError, UnknownSiteError

    message = " ".join(str(err).split())
    if isinstance(err, BundleNotFoundError):
        return MissingInputError(message)
    if isinstance(err, UnknownSiteError):
        return UsageError(message)
    return BadDataError(message)


def open_model(path: Path, *, source: str = "argument") -> ModelInfo:
    """Load and check a model bundle: weights' sha256, format version, preprocessing, templates."""
    from ..model.bundle import load_bundle
    from ..model.errors import ModelError
    from ..preproc.grid import GridSpec
    from ..preproc.spec import check_preprocessing_spec
    from ..templates import check_templates
    from .harmonization import harmonize_mem_gb

    if source == "demo" and not Path(path).is_dir():
        raise MissingInputError(
            f"the bundled demo model is missing from this installation ({path}); reinstall hcld-bids or give "
            "--model DIR"
        )
    try:
        bundle = load_bundle(path, device="cpu")
    except ModelError as err:
        raise model_error(err) from None
    spec = check_preprocessing_spec(bundle.manifest.get("preprocessing"), bundle=Path(path) / "manifest.json")
    from ..model.harmonize import Regime

    try:
        Regime.from_dict(bundle.manifest.get("inference"))
    except (TypeError, ValueError) as err:
        raise BadDataError(f"{Path(path) / 'manifest.json'}: invalid 'inference' block ({err}); use a bundle "
                           f"written by hcld-bids") from None
    files = check_templates(spec["template"], int(spec["resolution"]))
    grid = GridSpec.from_dict(spec["grid"])
    channels = (bundle.manifest.get("autoencoder", {}).get("config", {}).get("channels") or [32])[0]
    return ModelInfo(
        path=Path(path).absolute(), name=str(bundle.manifest.get("name") or Path(path).name), sha256=bundle.sha256,
        sites=tuple(bundle.sites), template=spec["template"], resolution=int(spec["resolution"]),
        registration=spec.get("registration", "affine"), grid=grid, template_file=Path(files["T1w"]),
        mem_gb=harmonize_mem_gb(grid.shape, channels), manifest=bundle.manifest,
    )


def resolve_torch_device(device: str) -> str:
    """Check ``--device``: ``auto`` picks CUDA when available; asking for CUDA without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is visible to this process; use --device cpu "
                             "(or auto), or run on a machine/container with a GPU (docker --gpus all, apptainer --nv)")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0 ... "
                             f"cuda:{torch.cuda.device_count() - 1}")
    return device


def check_t1w_images(records) -> None:
    """Raise :class:`BadDataError` (one line, file named) for the first unusable T1w."""
    from ..preproc.validate import load_t1w

    for record in records:
        load_t1w(record.path)


def check_reference_image(path) -> None:
    """``--reference-image`` must pass the checks of a T1w (3D, whole head, finite, non-empty); else 65/66
    with the option named, so the user knows which of their files is meant."""
    from ..preproc.validate import load_t1w

    try:
        load_t1w(path)
    except HCLDError as err:
        raise type(err)(f"--reference-image {err.message}") from None


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


def _provenance(static, style, device, wall_time, timings, low, high):
    """The "HCLD" block of the harmonized image's sidecar."""
    block = dict(static)
    block["StylePrototype"] = style
    block["Device"] = device
    scaling = dict(block.pop("IntensityScaling", {}))
    scaling.update({"low": float(low), "high": float(high)})
    block["IntensityScaling"] = scaling
    block["WallTimeSeconds"] = {"harmonization": float(wall_time), **{k: float(v) for k, v in timings.items()}}
    return block


def _regime_provenance(regime: dict) -> dict:
    """Sidecar keys of the inference regime: its kind, strength, DDIM steps and post-processing."""
    calls = {"sdedit": (None, regime["sampling_steps"]), "adain": (None, None), "research": (30, 10)}
    inversion, sampling = calls.get(regime["kind"], (regime["inversion_steps"], regime["sampling_steps"]))
    return {
        "InferenceRegime": regime["kind"],
        "HarmonizationStrength": float(regime["strength"]),
        "DDIMInversionSteps": inversion,
        "DDIMSamplingSteps": sampling,
        "DetailReinjection": float(regime.get("detail") or 0.0),
        "IntensityCalibration": bool(regime.get("calibrate")),
        "Regime": dict(regime),
    }


def static_provenance(config, model: ModelInfo, record, device: str) -> dict:
    """Provenance keys known before the workflow runs."""
    import platform

    import torch

    from .. import __version__
    from .harmonization import inference_regime

    reference = config.workflow.reference_image
    spec = model.manifest.get("preprocessing", {})
    scaling = spec.get("intensity_scaling", {})
    return {
        "ModelName": model.name,
        "ModelSHA256": model.sha256,
        "ModelPath": str(model.path),
        "SourceSite": record.site,
        "SiteSource": record.site_source,
        "TargetSite": config.workflow.target_site,
        "ReferenceImage": str(reference) if reference else None,
        **_regime_provenance(inference_regime(model.manifest, config.workflow)),
        "RandomSeed": int(config.workflow.random_seed),
        "RequestedDevice": config.workflow.device,
        "Template": model.template,
        "TemplateResolution": model.resolution,
        "Registration": model.registration,
        **({"SloppyPreprocessing": True} if config.workflow.sloppy else {}),
        "IntensityScaling": {"method": scaling.get("method", "percentile"),
                             "low_percentile": scaling.get("low_percentile"),
                             "high_percentile": scaling.get("high_percentile")},
        "Versions": {"hcld-bids": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "RunUUID": config.execution.run_uuid,
    }


def init_single_t1w_wf(config, model: ModelInfo, record, device: str, name: str):
    """Preprocess, harmonize and write the outputs of one T1w."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from ..interfaces.harmonize import ItkTransform
    from .anatomical import init_anat_preproc_wf
    from .harmonization import inference_regime, init_harmonization_wf
    from .outputs import init_outputs_wf
    from .qc import init_qc_wf

    omp = config.nipype.omp_nthreads
    native = config.workflow.native_output
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w", "reference_t1w", "reference_mask"]), name="inputnode")
    inputnode.inputs.t1w = str(record.path)

    anat = init_anat_preproc_wf(template=model.template, resolution=model.resolution, grid=model.grid,
                                registration=model.registration, omp_nthreads=omp, sloppy=config.workflow.sloppy)
    harm = init_harmonization_wf(
        model=model, target_site=config.workflow.target_site,
        regime=inference_regime(model.manifest, config.workflow), seed=config.workflow.random_seed, device=device,
        omp_nthreads=omp, native=native, label=_t1w_label(record))
    qc = init_qc_wf(model=model, target_site=config.workflow.target_site)
    xfm = pe.Node(ItkTransform(), name="itk_xfm", mem_gb=0.1)
    provenance = pe.Node(niu.Function(
        function=_provenance, input_names=["static", "style", "device", "wall_time", "timings", "low", "high"],
        output_names=["provenance"]), name="provenance", run_without_submitting=True)
    provenance.inputs.static = static_provenance(config, model, record, device)
    outputs = init_outputs_wf(output_dir=config.execution.output_dir, bids_dir=config.execution.bids_dir,
                              template=model.template, resolution=model.resolution, native=native)

    workflow.connect([
        (inputnode, anat, [("t1w", "inputnode.t1w")]),
        (anat, harm, [("outputnode.model_t1w", "inputnode.model_t1w"),
                      ("outputnode.model_mask", "inputnode.model_mask"),
                      ("outputnode.native_ref", "inputnode.native_ref"),
                      ("outputnode.xfm_tpl2t1w", "inputnode.xfm_tpl2t1w")]),
        (inputnode, harm, [("reference_t1w", "inputnode.reference_t1w")]),
        (anat, qc, [("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                    ("outputnode.brain_mask", "inputnode.brain_mask")]),
        (harm, qc, [("outputnode.harmonized_template", "inputnode.harmonized")]),
        (inputnode, qc, [("reference_t1w", "inputnode.reference_t1w"),
                         ("reference_mask", "inputnode.reference_mask")]),
        (anat, xfm, [("outputnode.xfm_t1w2tpl", "in_file")]),
        (harm, provenance, [("outputnode.style", "style"), ("outputnode.device", "device"),
                            ("outputnode.wall_time", "wall_time"), ("outputnode.timings", "timings")]),
        (anat, provenance, [("outputnode.scale_low", "low"), ("outputnode.scale_high", "high")]),
        (inputnode, outputs, [("t1w", "inputnode.source_file")]),
        (anat, outputs, [("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                         ("outputnode.brain_mask", "inputnode.brain_mask")]),
        (harm, outputs, [("outputnode.harmonized_template", "inputnode.harmonized_template"),
                         ("outputnode.harmonized_native", "inputnode.harmonized_native")]),
        (xfm, outputs, [("out_file", "inputnode.xfm_t1w2tpl")]),
        (provenance, outputs, [("provenance", "inputnode.provenance")]),
        (qc, outputs, [("outputnode.qc", "inputnode.qc")]),
    ])
    return workflow


def init_hcld_wf(config, records, model: ModelInfo, device: str):
    """The participant-level workflow: one sub-workflow per participant, one per T1w inside it.

    With ``--reference-image``, the reference is preprocessed once and feeds every T1w's harmonization.
    Crash files of a participant's nodes go to ``OUTPUT_DIR/sub-<label>/log/<run uuid>/``.
    """
    from nipype.pipeline import engine as pe

    from .anatomical import init_anat_preproc_wf

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
    for subject, subject_records in sorted(by_subject.items()):
        subject_wf = pe.Workflow(name=subject_wf_name(subject))
        subject_wf.config["execution"] = {
            "crashdump_dir": str(config.execution.output_dir / f"sub-{subject}" / "log" / config.execution.run_uuid),
            "crashfile_format": "txt",
            "stop_on_first_crash": bool(config.nipype.stop_on_first_crash),
            "remove_unnecessary_outputs": False,
            "hash_method": "content",
        }
        for record in subject_records:
            t1w_wf = init_single_t1w_wf(config, model, record, device, name=t1w_wf_name(record))
            subject_wf.add_nodes([t1w_wf])
        for node in subject_wf._get_all_nodes():
            node.config = deepcopy(subject_wf.config)
        workflow.add_nodes([subject_wf])
        if reference_wf is not None:
            for record_wf in subject_wf._graph.nodes():
                workflow.connect(reference_wf, "outputnode.model_t1w",
                                 subject_wf, f"{record_wf.name}.inputnode.reference_t1w")
                workflow.connect(reference_wf, "outputnode.model_mask",
                                 subject_wf, f"{record_wf.name}.inputnode.reference_mask")
    return workflow


def plugin_settings(config) -> dict:
    """nipype plugin and arguments: MultiProc with --nprocs/--mem, or the --use-plugin file."""
    args = dict(config.nipype.plugin_args)
    if config.nipype.plugin == "MultiProc":
        args.setdefault("n_procs", config.nipype.nprocs)
        if config.nipype.mem_gb:
            args.setdefault("memory_gb", config.nipype.mem_gb)
        args.setdefault("raise_insufficient", True)
        # Workers start from a clean server process, not forked from this one: a process whose PyTorch/OpenMP
        # threads are already running (a train level just before, a notebook) deadlocks forked children.
        args.setdefault("mp_context", "forkserver")
        args.pop("maxtasksperchild", None)  # LegacyMultiProc only
    return {"plugin": config.nipype.plugin, "plugin_args": args}


def check_memory(config, model: ModelInfo) -> None:
    """``--mem`` smaller than one harmonization needs is a usage error (nothing could ever run)."""
    mem = config.nipype.mem_gb
    if mem is not None and mem < model.mem_gb:
        raise UsageError(f"--mem {mem:g} GB is less than one harmonization needs ({model.mem_gb:g} GB for the "
                         f"{'x'.join(map(str, model.grid.shape))} grid of model {model.path}); raise --mem")


def nipype_execution_settings(config) -> dict:
    """The ``execution`` settings of every workflow of a run.

    Content hashes (not time stamps) and no output pruning: a node's cache key then depends on its inputs
    only, so the train level's preprocessing is found cached by a participant run in the same work
    directory (and by a rerun after the files were copied).
    """
    return {
        "crashfile_format": "txt",
        "stop_on_first_crash": str(bool(config.nipype.stop_on_first_crash)).lower(),
        "remove_unnecessary_outputs": "false",
        "hash_method": "content",
        # the scheduler sleeps this long between looks at its workers (nipype's 2 s default cost a
        # one-participant run 40 s of idling)
        "poll_sleep_duration": "0.2",
    }


def configure_nipype(config) -> None:
    """Set the run's nipype settings globally; call it before any workflow is built."""
    from nipype import config as nipype_config

    for key, value in nipype_execution_settings(config).items():
        nipype_config.set("execution", key, value)
    nipype_config.set("monitoring", "enabled", "false")
    os.environ.setdefault("NIPYPE_NO_ET", "1")


#: How a full disk or quota shows in a node's traceback.
_DISK_FULL_MARKERS = ("No space left on device", "Disk quota exceeded")


def _disk_full_crash(crash_files) -> str | None:
    """The line of a crash file that says a write failed for lack of space, or None."""
    for crash in crash_files:
        try:
            text = Path(crash).read_text(errors="replace")
        except OSError:
            continue
        for line in reversed(text.splitlines()):
            if any(marker in line for marker in _DISK_FULL_MARKERS):
                return " ".join(line.split())[:200]
    return None


def run_workflow(workflow, config) -> None:
    """Run a nipype workflow with the run's settings; a failed node ends the run (exit 1) naming its crash file,
    or with exit 73 when the node failed because the disk or quota is full."""
    configure_nipype(config)
    # A workflow keeps the global settings of the moment it was built, and they win over later global
    # changes: set them on the workflow itself too.
    workflow.config.setdefault("execution", {}).update(nipype_execution_settings(config))
    import gc

    # nipype's scheduler runs a full garbage collection before each submission; with torch, pandas and
    # pybids loaded each took 0.4 s. Objects that exist now live for the whole run: leave them out of it.
    gc.freeze()
    try:
        workflow.run(**plugin_settings(config))
    except RuntimeError as err:
        crashes = sorted(str(p) for p in config.execution.output_dir.glob(f"sub-*/log/{config.execution.run_uuid}/*"))
        where = f"; crash file(s): {', '.join(crashes[:3])}" if crashes else ""
        full = _disk_full_crash(crashes)
        if full is not None:
            raise CannotCreateOutputError(
                f"the disk is full ({full}){where}; free space on the file system of OUTPUT_DIR or the work "
                "directory and rerun (finished steps are reused from the work directory)"
            ) from None
        raise HCLDError(f"{' '.join(str(err).split())[:300]}{where}") from None
    finally:
        gc.unfreeze()


def write_boilerplate(config, manifest=None, **overrides) -> Path:
    """Write ``OUTPUT_DIR/logs/CITATION.{md,bib,html}`` describing this run; returns the Markdown file."""
    from ..reports.boilerplate import citation_context, write_citation

    context = citation_context(config, manifest, **overrides)
    return write_citation(config.execution.output_dir, context)["md"]


def write_participant_reports(config, subjects) -> list[Path]:
    """Write ``OUTPUT_DIR/sub-<label>.html`` for each subject that has outputs (others are skipped)."""
    from ..errors import NoDataError
    from ..reports.participant import write_participant_report

    written = []
    for subject in sorted(set(subjects)):
        try:
            written.append(write_participant_report(config.execution.output_dir, subject, config=config))
        except NoDataError as err:
            LOGGER.warning("%s", err)
    return written


def _participant_checks(config, records):
    """Everything that can fail before the workflow runs; returns the model and the torch device."""
    from ..bids.sites import check_target_site

    model = open_model(config.workflow.model, source=config.workflow.model_source)
    if config.workflow.target_site:
        config.workflow.target_site = check_target_site(config.workflow.target_site, list(model.sites))
    if config.workflow.reference_image:
        check_reference_image(config.workflow.reference_image)
    spaces = [s for s in config.workflow.output_spaces if s != "T1w"]
    for space in spaces:
        if space != model.template:
            raise UsageError(f"--output-spaces {space}: the model {model.path} works in {model.template}; "
                             f"use {model.template} and/or T1w")
    device = resolve_torch_device(config.workflow.device)
    return model, device


def run_participant(config, records) -> int:
    """Preprocess and harmonize every selected T1w; write derivatives, reports and boilerplate."""
    model, device = _participant_checks(config, records)
    subjects = [r.subject for r in records]
    if config.execution.boilerplate_only:
        path = write_boilerplate(config, model.manifest, device=device)
        LOGGER.info("methods boilerplate written to %s", path)
        return 0
    if config.execution.reports_only:
        written = write_participant_reports(config, subjects)
        if not written:
            from ..errors import NoDataError

            raise NoDataError(f"{config.execution.output_dir} holds no outputs of the selected participants; "
                              "run the participant level before --reports-only")
        LOGGER.info("%d participant report(s) written", len(written))
        return 0
    check_memory(config, model)
    check_t1w_images(records)

    workflow = init_hcld_wf(config, records, model, device)
    LOGGER.info("harmonizing %d T1w image(s) with model %s (%s) on %s", len(records), model.name,
                model.sha256[:12], device)
    started = time.time()
    run_workflow(workflow, config)
    write_boilerplate(config, model.manifest, device=device)
    write_participant_reports(config, subjects)
    stale = remove_stale_temporaries(config.execution.output_dir, subjects, older_than=started)
    if stale:
        LOGGER.info("removed %d temporary file(s) left by an interrupted earlier run", len(stale))
    LOGGER.info("outputs written to %s", config.execution.output_dir)
    return 0


def run_group(config, records) -> int:
    """Group table and QC report from the participant outputs in OUTPUT_DIR."""
    from ..reports.group import run_group as write_group

    tsv, html = write_group(config.execution.output_dir, config.execution.bids_dir, n_jobs=config.nipype.nprocs)
    LOGGER.info("group table %s and report %s written", tsv, html)
    return 0


def run_level(config, records) -> int:
    """Run the configured analysis level; return the exit code."""
    level = config.execution.analysis_level
    if level == "participant":
        return run_participant(config, records)
    if level == "group":
        return run_group(config, records)
    if level == "train":
        from .train import run_train

        return run_train(config, records)
    raise HCLDError(f"the {level} level is not available in this build")
