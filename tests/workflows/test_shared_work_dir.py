"""One work directory shared by several output directories, and what a failed run leaves behind.

Cheap: the outputs sub-workflow alone on tiny images (no preprocessing, no model), and crash files written
by hand in nipype's format.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.cli.parser import build_parser
from hcld_bids.cli.run import build_config
from hcld_bids.errors import HCLDError
from hcld_bids.levels.execution import failure_message, remove_old_crash_files, run_workflow
from hcld_bids.testing import make_bids_dataset


def _outputs_wf(work: Path, bids: Path, out: Path, inputs: dict):
    from nipype.pipeline import engine as pe

    from hcld_bids.workflows.outputs import init_outputs_wf

    workflow = pe.Workflow(name="hcld_bids_wf", base_dir=str(work))
    outputs = init_outputs_wf(output_dir=out, bids_dir=bids, template="MNI152NLin6Asym", resolution=2, native=False)
    for key, value in inputs.items():
        setattr(outputs.inputs.inputnode, key, value)
    workflow.add_nodes([outputs])
    workflow.config["execution"] = {"hash_method": "content", "remove_unnecessary_outputs": "false",
                                    "crashdump_dir": str(work / "crash"), "crashfile_format": "txt"}
    return workflow


def test_a_second_output_dir_with_the_same_work_dir_gets_its_own_sources(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    source = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), affine), source)
    files = tmp_path / "inputs"
    files.mkdir()
    inputs = {"source_file": str(source), "provenance": {"ModelName": "m"}, "qc": {"Flags": []}}
    for key, dtype in (("t1w_preproc", np.float32), ("brain_mask", np.uint8), ("harmonized_template", np.float32)):
        nib.save(nib.Nifti1Image(np.ones((4, 5, 6), dtype), affine), files / f"{key}.nii.gz")
        inputs[key] = str(files / f"{key}.nii.gz")
    (files / "xfm.txt").write_text("#Insight Transform File V1.0\n")
    inputs["xfm_t1w2tpl"] = str(files / "xfm.txt")

    work = tmp_path / "work"
    stem = "sub-01/anat/sub-01_space-MNI152NLin6Asym_res-2_desc-{}_T1w"
    for out in (tmp_path / "out", tmp_path / "out_ref"):
        _outputs_wf(work, bids, out, inputs).run(plugin="Linear")
        sidecar = json.loads((out / f"{stem.format('harmonized')}.json").read_text())
        assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz",
                                      f"bids::{stem.format('preproc')}.nii.gz"]
        assert (out / f"{stem.format('harmonized')}.nii.gz").is_file()


def _config(tmp_path, scans_dir):
    bids = make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir, subjects={"01": "siemens"})
    args = build_parser().parse_args([str(bids), str(tmp_path / "out"), "participant", "--target-site", "siteA",
                                      "-w", str(tmp_path / "work"), "--skip-bids-validation"])
    return build_config(args)


def _records():
    from hcld_bids.bids.layout import T1wRecord

    return [T1wRecord(path=Path("/bids/sub-01/anat/sub-01_T1w.nii.gz"), relpath="sub-01/anat/sub-01_T1w.nii.gz",
                      subject="01", session=None, run=None, acquisition=None, entities={}, metadata={},
                      site="siteA", site_source="participants.tsv"),
            T1wRecord(path=Path("/bids/sub-01/ses-b/anat/sub-01_ses-b_T1w.nii.gz"),
                      relpath="sub-01/ses-b/anat/sub-01_ses-b_T1w.nii.gz", subject="01", session="b", run=None,
                      acquisition=None, entities={"session": "b"}, metadata={}, site="siteA",
                      site_source="participants.tsv")]


def _crash(directory: Path, node: str, error: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-20260101-000000-user-{node.rsplit('.', 1)[-1]}-{len(list(directory.iterdir()))}.txt"
    path.write_text(f"Node: {node}\nWorking directory: /work/x\n\nNode inputs:\n\nin_file = <undefined>\n\n"
                    "Traceback (most recent call last):\n  File \"x.py\", line 1, in run\n"
                    "nipype.pipeline.engine.nodes.NodeExecutionError: Exception raised while executing Node x.\n\n"
                    f"Traceback:\n\tTraceback (most recent call last):\n\t  File \"y.py\", line 2\n\t{error}\n")
    return path


class _FailingWorkflow:
    """Stands in for a nipype workflow whose nodes crashed as nipype reports it."""

    def __init__(self, crashes):
        self.config, self.crashes = {}, crashes

    def run(self, **_):
        for directory, node, error in self.crashes:
            _crash(directory, node, error)
        raise RuntimeError(f"{len(self.crashes)} raised. Re-raising first.")


def test_a_failed_node_ends_with_one_line_naming_the_subject_image_and_step(tmp_path, scans_dir):
    config = _config(tmp_path, scans_dir)
    logs = config.execution.output_dir / "sub-01" / "log" / config.execution.run_uuid
    workflow = _FailingWorkflow([
        (logs, "hcld_bids_wf.sub_01_wf.t1w_wf.anat_preproc_wf.register", "RuntimeError: ANTs did not converge"),
        (logs, "hcld_bids_wf.sub_01_wf.t1w_ses_b_wf.harmonization_wf.harmonize", "ValueError: bad volume"),
    ])
    with pytest.raises(HCLDError) as info:
        run_workflow(workflow, config, _records())
    message = info.value.message
    assert info.value.exit_code == 1 and "\n" not in message
    assert message.startswith("sub-01 (sub-01_T1w): the registration to the template failed "
                              "(RuntimeError: ANTs did not converge); crash file: ")
    assert str(logs) in message and "1 more failed step(s) (sub-01 (sub-01_ses-b_T1w))" in message
    assert "Re-raising" not in message and "raised" not in message
    assert message.endswith("run the same command again (finished steps are reused)")


def test_failure_message_names_the_reference_image_and_unknown_steps(tmp_path):
    crash = _crash(tmp_path, "hcld_bids_wf.reference_preproc_wf.n4_head", "OSError: cannot read")
    assert failure_message([str(crash)]).startswith(
        "the --reference-image: the bias correction (N4, whole head) failed (OSError: cannot read)")
    crash = _crash(tmp_path / "b", "hcld_bids_wf.sub_02_wf.t1w_wf.something_new", "KeyError: 'x'")
    assert failure_message([str(crash)]).startswith("sub-02: step something_new failed (KeyError: 'x')")


def test_a_successful_rerun_removes_the_crash_files_of_the_steps_it_finished(tmp_path, scans_dir):
    config = _config(tmp_path, scans_dir)
    old = config.execution.output_dir / "sub-01" / "log" / "20250101-000000_old"
    finished = _crash(old, "hcld_bids_wf.sub_01_wf.t1w_wf.harmonization_wf.harmonize", "ValueError: x")
    other = _crash(old, "hcld_bids_wf.sub_01_wf.t1w_ses_c_wf.anat_preproc_wf.register", "ValueError: y")
    removed = remove_old_crash_files(config, _records()[:1])
    assert removed == [finished] and not finished.exists()
    assert other.exists()  # another image of the subject, not part of this run: its crash still stands
    remove_old_crash_files(config, [*_records()[:1], _ses_c()])
    assert not other.exists() and not (config.execution.output_dir / "sub-01" / "log").exists()


def _ses_c():
    import dataclasses

    record = _records()[1]
    return dataclasses.replace(record, session="c", entities={"session": "c"})
