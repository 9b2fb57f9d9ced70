"""On CUDA a participant's T1w images are harmonized together by one batch node; on the CPU each has its own."""

from __future__ import annotations

import pytest

from hcld_bids.cli.parser import build_parser
from hcld_bids.cli.run import build_config, collect_inputs, prepare_directories
from hcld_bids.config import DEMO_MODEL_DIR
from hcld_bids.levels.execution import describe_failure
from hcld_bids.levels.model import open_model
from hcld_bids.levels.progress import stage_of
from hcld_bids.workflows.base import init_hcld_wf, t1w_wf_name


@pytest.fixture(scope="module")
def sessions(bids_sessions, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    config = build_config(build_parser().parse_args([
        str(bids_sessions), str(tmp / "out"), "participant", "--target-site", "siteA", "-w", str(tmp / "work"),
        "--skip-bids-validation", "--nprocs", "2", "--omp-nthreads", "2"]))
    prepare_directories(config)
    return config, collect_inputs(config), open_model(DEMO_MODEL_DIR)


def _edges(workflow):
    """(source, source field or (field, function source, args), destination, field) of a workflow's graph."""
    return [(src.name, a, dst.name, b) for src, dst, data in workflow._graph.edges(data=True) for a, b in data["connect"]]


def test_on_cuda_one_batch_node_per_participant_hands_each_image_its_own_result(sessions):
    config, records, model = sessions
    workflow = init_hcld_wf(config, records, model, "cuda")
    names = set(workflow.list_node_names())
    cpu_names = set(init_hcld_wf(config, records, model, "cpu").list_node_names())
    for subject in ("01", "02"):
        images = [r for r in records if r.subject == subject]
        assert len(images) == 4
        node = workflow.get_node(f"sub_{subject}_wf.harmonize_batch_wf.harmonize")
        assert node.inputs.device == "cuda" and node.inputs.num_threads == 2 and node.n_procs == 2
        assert node.inputs.labels == [f"sub-{subject}_ses-{s}_run-{r}" for s in "ab" for r in (1, 2)]
        assert node.inputs.target_site == "siteA" and node.mem_gb == model.mem_gb
        subject_wf = workflow.get_node(f"sub_{subject}_wf")
        batch_wf = subject_wf.get_node("harmonize_batch_wf")
        into, out_of = _edges(subject_wf), _edges(batch_wf)
        for index, image in enumerate(images):
            name = t1w_wf_name(image)
            # the preprocessing keeps the names (and work directory) of the CPU graph and of the train level
            anat = {n for n in names if n.startswith(f"sub_{subject}_wf.{name}.")}
            assert anat and all(".anat_preproc_wf." in n or n.endswith(".inputnode") for n in anat) and anat <= cpu_names
            # its model-grid image is input <index + 1> of the batch, and the steps after it get element <index>
            assert (name, "anat_preproc_wf.outputnode.model_t1w", "harmonize_batch_wf",
                    f"merge_t1w.in{index + 1}") in into
            assert (name, "anat_preproc_wf.outputnode.model_mask", "harmonize_batch_wf",
                    f"merge_mask.in{index + 1}") in into
            back = {b: a for s, a, d, b in out_of if s == "harmonize" and d == name}
            for dest, src in (("harmonized_model", "out_files"), ("wall_time", "wall_times"), ("timings", "timings")):
                field, _, args = back[f"inputnode.{dest}"]
                assert field == src and tuple(args) == (index,)
            assert back["inputnode.style"] == "style" and back["inputnode.device"] == "device"
            after = {n for n in names if n.startswith(f"sub_{subject}_wf.harmonize_batch_wf.{name}.")}
            assert {n.split(".", 3)[3] for n in after} == {n.split(".", 2)[2] for n in cpu_names
                                                           if n.startswith(f"sub_{subject}_wf.{name}.")
                                                           and ".anat_preproc_wf." not in n} - {"harmonization_wf.harmonize"}


def test_on_the_cpu_every_image_has_its_own_harmonization_node(sessions):
    config, records, model = sessions
    names = init_hcld_wf(config, records, model, "cpu").list_node_names()
    assert len([n for n in names if n.endswith("harmonization_wf.harmonize")]) == len(records) == 8
    assert not [n for n in names if "harmonize_batch_wf" in n]


def test_the_batch_workflow_s_nodes_are_named_in_failures_and_progress(sessions):
    _, records, _ = sessions
    batch = "hcld_bids_wf.sub_01_wf.harmonize_batch_wf"
    assert describe_failure(f"{batch}.harmonize", records) == "sub-01: the harmonization"
    assert describe_failure(f"{batch}.t1w_ses_a_run_2_wf.qc_wf.harmonization_qc", records) == \
        "sub-01 (sub-01_ses-a_run-2_T1w): the quality control"
    assert stage_of(f"{batch}.harmonize") == "harmonizing"
    assert stage_of(f"{batch}.t1w_ses_a_run_2_wf.outputs_wf.ds_harmonized") == "writing outputs"
