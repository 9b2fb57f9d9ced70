"""The participant level.

1. opens the model bundle (hashes checked), checks that its preprocessing matches this pipeline, that the
   templates it needs are installed and that the target site is one of its sites;
2. checks every selected T1w (3D, finite, non-empty, sane voxels) before anything runs, so bad data ends
   the run with one line and exit code 65 instead of a crashed node;
3. builds one nipype workflow (:func:`hcld_bids.workflows.base.init_hcld_wf`) and runs it with the
   configured plugin, crash files under ``OUTPUT_DIR/sub-<label>/log/<run uuid>/``;
4. writes the participant reports and the methods boilerplate, and prints a summary (what was harmonized,
   what failed QC and why, what is incomplete, where the reports are).

The console shows one line per participant and stage meanwhile (:mod:`.progress`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..bids.atomic import remove_stale_temporaries
from ..errors import UsageError
from ..manifest import describe_sites
from .execution import (
    check_reference_image,
    check_t1w_images,
    remove_old_crash_files,
    run_workflow,
    write_boilerplate,
)
from .model import check_memory, open_model, resolve_torch_device
from .progress import PROGRESS, Progress, print_summary

LOGGER = logging.getLogger("hcld_bids")


def template_source(model) -> str:
    """``"shipped"`` when the model's template files are the package's copies, else ``"templateflow"``."""
    from ..templates import is_shipped

    return "shipped" if is_shipped(model.template_file) else "templateflow"


def write_participant_reports(config, subjects) -> list[Path]:
    """Write ``OUTPUT_DIR/sub-<label>.html`` for each subject that has outputs (others are skipped).

    After a run, the figures are drawn by up to ``--nprocs`` processes forked from the run's worker server
    (matplotlib already imported there); with ``--reports-only``, here.
    """
    from ..errors import NoDataError
    from ..reports.participant import write_participant_report
    from .execution import worker_pool

    written = []
    with worker_pool(config) as pool:
        for subject in sorted(set(subjects)):
            try:
                written.append(write_participant_report(config.execution.output_dir, subject, config=config,
                                                        executor=pool))
            except NoDataError as err:
                LOGGER.warning("%s", err)
    return written


def participant_checks(config, records):
    """Everything that can fail before the workflow runs; returns the model and the torch device."""
    from ..bids.sites import check_target_site

    model = open_model(config.workflow.model, source=config.workflow.model_source)
    if model.demo and config.workflow.model_source != "demo":
        LOGGER.warning("the model %s has the networks of the demo model shipped with hcld-bids (%s): for trying the "
                       "app, not for research results; every report says so", model.path,
                       describe_sites(model.manifest))
    if config.workflow.target_site:
        config.workflow.target_site = check_target_site(config.workflow.target_site, list(model.sites),
                                                        records=records)
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
    from ..workflows.base import init_hcld_wf

    model, device = participant_checks(config, records)
    subjects = [r.subject for r in records]
    if config.execution.boilerplate_only:
        path = write_boilerplate(config, model.manifest, device=device, template_source=template_source(model))
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
    target = config.workflow.target_site or f"the style of {config.workflow.reference_image}"
    PROGRESS.info("harmonizing %d T1w image(s) of %d participant(s) toward %s with model %s on %s", len(records),
                  len(set(subjects)), target, model.name, device)
    started = time.time()
    run_workflow(workflow, config, records, progress=Progress(records))
    remove_old_crash_files(config, records)
    write_boilerplate(config, model.manifest, device=device, template_source=template_source(model))
    PROGRESS.info("writing the participant report(s)")
    reports = write_participant_reports(config, subjects)
    stale = remove_stale_temporaries(config.execution.output_dir, subjects, older_than=started)
    if stale:
        LOGGER.info("removed %d temporary file(s) left by an interrupted earlier run", len(stale))
    summarize_participants(config, records, model, reports)
    return 0


def _median(values) -> float:
    import math

    finite = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not finite:
        return math.nan
    middle = len(finite) // 2
    return finite[middle] if len(finite) % 2 else (finite[middle - 1] + finite[middle]) / 2


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def summarize_participants(config, records, model, reports) -> dict:
    """Print the summary that ends the participant level, from what it wrote (the sidecars); return it."""
    from ..reports.outputs import find_images
    from ..reports.participant import FLAG_TEXT
    from ..workflows.base import _t1w_label

    out = config.execution.output_dir
    wanted = {_t1w_label(r): r for r in records}
    found = {image.prefix: image for subject in sorted({r.subject for r in records})
             for image in find_images(out, subject) if image.prefix in wanted}
    done = {label: image for label, image in found.items() if image.complete and image.qc is not None}
    flagged = {label: list(image.qc.get("Flags") or []) for label, image in done.items() if image.qc.get("Flags")}
    incomplete = sorted(set(wanted) - set(done))
    target = config.workflow.target_site or f"the style of {config.workflow.reference_image}"
    lines = []
    if model.demo:
        lines.append(("warning", "harmonized with the demo model shipped with hcld-bids: for trying the app, not "
                                 "for research results (train your own with the train level); every report says so"))
    for label, flags in sorted(flagged.items())[:20]:
        meaning = "; ".join(FLAG_TEXT.get(flag, flag) for flag in flags)
        lines.append(("warning", f"QC FAILED for {label}_T1w: {', '.join(flags)} ({meaning}); look at "
                                 f"{out / f'sub-{wanted[label].subject}.html'} before using it"))
    if len(flagged) > 20:
        lines.append(("warning", f"... and {len(flagged) - 20} more image(s) failed QC (group_T1w.tsv after the "
                                 "group level lists them all)"))
    lines.append(("info", f"QC: {len(flagged)} of {len(done)} image(s) flagged" if flagged
                  else f"QC: none of the {len(done)} image(s) flagged"))
    at_target = sorted(label for label, image in done.items() if image.at_target)
    if at_target:
        change = _median([done[label].qc.get("MeanAbsoluteChange") for label in at_target])
        others = _median([image.qc.get("MeanAbsoluteChange") for label, image in done.items()
                          if label not in at_target])
        lines.append(("info", f"already at the target site {config.workflow.target_site}: {len(at_target)} image(s) "
                              f"({', '.join(label + '_T1w' for label in at_target[:5])}"
                              f"{', ...' if len(at_target) > 5 else ''}), harmonized anyway so that all images share "
                              f"one processing; median change {_fmt(change)} against {_fmt(others)} for the others "
                              "(mean absolute difference in the brain, [0, 1] scale)"))
    if incomplete:
        lines.append(("warning", f"{len(incomplete)} image(s) incomplete: {', '.join(incomplete[:10])}"))
    lines.append(("info", "reports: " + (", ".join(str(p) for p in reports) if reports else "none")))
    lines.append(("info", f"methods text: {out / 'logs' / 'CITATION.md'}; log: {config.execution.log_file}"))
    print_summary(f"participant level finished: {len(done)} of {len(records)} image(s) harmonized toward {target}",
                  lines)
    return {"done": sorted(done), "flagged": flagged, "incomplete": incomplete}
