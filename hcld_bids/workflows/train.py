"""The preprocessing graph of the train level (and of ``train --add-site-prototypes``): one anatomical
preprocessing per T1w, its model-grid outputs exported to ``<work dir>/train/inputs``. Running it and the
training itself are :mod:`hcld_bids.levels.train`.
"""

from __future__ import annotations

from pathlib import Path

# imported from here by benchmarks/quality_real_vendors.py


def _export(model_t1w, model_mask, dest_t1w, dest_mask):
    """Copy the model-grid images of one T1w to fixed names in the work directory (atomically)."""
    from hcld_bids.bids.atomic import atomic_copy

    for src, dest in ((model_t1w, dest_t1w), (model_mask, dest_mask)):
        atomic_copy(src, dest)
    return dest_t1w


def training_inputs_dir(config) -> Path:
    return config.execution.work_dir / "train" / "inputs"


def _label(record) -> str:
    from .base import _t1w_label

    return _t1w_label(record)


def init_train_preproc_wf(config, records, *, template: str, resolution: int, grid, registration: str):
    """One anatomical preprocessing per T1w; its model-grid outputs copied to ``<work>/train/inputs``.

    Workflow and node names are those of the participant level (``hcld_bids_wf/sub_*_wf/t1w*_wf/
    anat_preproc_wf``), so a participant run in the same work directory finds these results cached; crash
    files go where the participant level puts them (``OUTPUT_DIR/sub-<label>/log/<run uuid>/``).
    """
    from collections import defaultdict

    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from .anatomical import init_anat_preproc_wf
    from copy import deepcopy

    from .base import _subject_execution, subject_wf_name, t1w_wf_name

    workflow = pe.Workflow(name="hcld_bids_wf", base_dir=str(config.execution.work_dir))
    outdir = training_inputs_dir(config)
    outdir.mkdir(parents=True, exist_ok=True)
    by_subject = defaultdict(list)
    for record in records:
        by_subject[record.subject].append(record)
    for subject, subject_records in sorted(by_subject.items()):
        subject_wf = pe.Workflow(name=subject_wf_name(subject))
        for record in subject_records:
            label = _label(record)
            t1w_wf = pe.Workflow(name=t1w_wf_name(record))
            anat = init_anat_preproc_wf(template=template, resolution=resolution, grid=grid,
                                        registration=registration, omp_nthreads=config.nipype.omp_nthreads,
                                        sloppy=config.workflow.sloppy)
            inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
            inputnode.inputs.t1w = str(record.path)
            export = pe.Node(niu.Function(function=_export, input_names=["model_t1w", "model_mask", "dest_t1w",
                                                                         "dest_mask"], output_names=["out"]),
                             name="export_training_input", run_without_submitting=True)
            export.inputs.dest_t1w = str(outdir / f"{label}_t1w.nii.gz")
            export.inputs.dest_mask = str(outdir / f"{label}_mask.nii.gz")
            t1w_wf.connect([(inputnode, anat, [("t1w", "inputnode.t1w")]),
                            (anat, export, [("outputnode.model_t1w", "model_t1w"),
                                            ("outputnode.model_mask", "model_mask")])])
            subject_wf.add_nodes([t1w_wf])
        subject_wf.config["execution"] = _subject_execution(config, subject)
        for node in subject_wf._get_all_nodes():
            node.config = deepcopy(subject_wf.config)
        workflow.add_nodes([subject_wf])
    return workflow
