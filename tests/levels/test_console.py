"""The console of a run: one progress line per subject and stage, nipype's detail in the log file only (or
on the console with -v), and the summary that ends each level."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from hcld_bids.cli.parser import build_parser
from hcld_bids.cli.run import _logging_to_stderr, _run_log, build_config, prepare_directories
from hcld_bids.levels.execution import run_workflow
from hcld_bids.levels.progress import Progress, stage_of
from hcld_bids.testing import make_bids_dataset


def _preprocess(x):
    import logging

    logging.getLogger("nipype.interface").info("NIPYPE-DETAIL preprocessing %s", x)
    return x


def _harmonize(x, label):
    import logging

    logger = logging.getLogger("nipype.interface")
    for done in (5, 10):  # what hcld_bids.interfaces.harmonize logs while the diffusion runs
        logger.info("harmonizing %s: inversion %d/10", label, done,
                    extra={"hcld_progress": {"label": label, "stage": "inversion", "done": done, "total": 10}})
    return x


def _graph(work: Path, records):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from hcld_bids.workflows.base import _t1w_label, subject_wf_name, t1w_wf_name

    workflow = pe.Workflow(name="hcld_bids_wf", base_dir=str(work))
    for record in records:
        subject = pe.Workflow(name=subject_wf_name(record.subject))
        image = pe.Workflow(name=t1w_wf_name(record))
        anat = pe.Workflow(name="anat_preproc_wf")
        harm = pe.Workflow(name="harmonization_wf")
        validate = pe.Node(niu.Function(function=_preprocess, input_names=["x"], output_names=["x"]), name="validate")
        validate.inputs.x = record.subject
        anat.add_nodes([validate])
        harmonize = pe.Node(niu.Function(function=_harmonize, input_names=["x", "label"], output_names=["x"]),
                            name="harmonize")
        harmonize.inputs.label = _t1w_label(record)
        harm.add_nodes([harmonize])
        image.connect(anat, "validate.x", harm, "harmonize.x")
        subject.add_nodes([image])
        workflow.add_nodes([subject])
    return workflow


@pytest.fixture
def two_subjects(tmp_path, scans_dir):
    from hcld_bids.cli.run import collect_inputs

    bids = make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir, subjects={"01": "philips", "02": "uih"})
    config = build_config(build_parser().parse_args([
        str(bids), str(tmp_path / "out"), "participant", "--target-site", "x", "-w", str(tmp_path / "work"),
        "--skip-bids-validation", "--nprocs", "2"]))
    prepare_directories(config)
    return config, collect_inputs(config)


@pytest.mark.parametrize("verbosity", [0, 1])
def test_workers_report_progress_and_nipype_detail_goes_to_the_log_file(two_subjects, capfd, verbosity,
                                                                        monkeypatch):
    config, records = two_subjects
    config.execution.verbosity = verbosity
    # nipype's own console handler, as nipype installs it on import (here on the captured stdout)
    monkeypatch.setattr(logging.getLogger("nipype"), "handlers", [logging.StreamHandler(sys.stdout)])
    with _logging_to_stderr(verbosity), _run_log(config):
        run_workflow(_graph(config.execution.work_dir, records), config, records, progress=Progress(records))
    captured = capfd.readouterr()
    console = captured.out + captured.err
    for line in ("hcld-bids: subject 1/2 (sub-01): preprocessing", "hcld-bids: subject 2/2 (sub-02): harmonizing",
                 "hcld-bids: subject 1/2 (sub-01): harmonizing sub-01, inversion 10/10",
                 "hcld-bids: subject 2/2 (sub-02): harmonizing sub-02, inversion 5/10"):
        assert line in console.splitlines(), console
    assert console.count("subject 1/2 (sub-01): preprocessing") == 1  # one line per subject and stage
    log = config.execution.log_file.read_text()
    assert "NIPYPE-DETAIL preprocessing 01" in log and "[Job" in log  # workers' and scheduler's messages
    # nipype's detail reaches the console only with -v
    assert ("NIPYPE-DETAIL" in console) == bool(verbosity) and ("[Job" in console) == bool(verbosity)


def test_stage_of_a_node_follows_its_sub_workflow():
    assert stage_of("hcld_bids_wf.sub_01_wf.t1w_wf.anat_preproc_wf.register") == "preprocessing"
    assert stage_of("hcld_bids_wf.sub_01_wf.t1w_wf.harmonization_wf.harmonize") == "harmonizing"
    assert stage_of("hcld_bids_wf.sub_01_wf.t1w_wf.qc_wf.harmonization_qc") == "quality control"
    assert stage_of("hcld_bids_wf.sub_01_wf.t1w_wf.outputs_wf.ds_preproc") == "preprocessing"
    assert stage_of("hcld_bids_wf.sub_01_wf.t1w_wf.outputs_wf.ds_harmonized") == "writing outputs"
