"""Resource limits: --omp-nthreads sets the threads of every torch and ANTs step, --nprocs/--mem reach the
scheduler and every node declares what it uses.

That MultiProc then never runs more harmonizations at once than --mem allows is shown on a real run in
test_participant.py (``test_mem_never_lets_more_harmonizations_run_at_once_than_fit``).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from hcld_bids.cli.parser import build_parser
from hcld_bids.cli.run import build_config, collect_inputs, prepare_directories
from hcld_bids.config import DEMO_MODEL_DIR
from hcld_bids.model.harmonize import Harmonizer
from hcld_bids.levels import train as train_module
from hcld_bids.levels.execution import plugin_settings
from hcld_bids.levels.model import open_model
from hcld_bids.workflows.base import init_hcld_wf

ANTS_NODES = {"n4_head", "register", "n4_brain", "to_template", "mask_first_native", "brain_mask_native"}


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _config(bids, tmp_path, *extra):
    args = build_parser().parse_args([str(bids), str(tmp_path / "out"), *extra, "-w", str(tmp_path / "work"),
                                      "--skip-bids-validation"])
    return build_config(args)


@pytest.mark.parametrize("threads", [1, 3])
def test_harmonize_node_runs_torch_with_omp_nthreads_threads(threads, tmp_path, monkeypatch, restore_torch_threads):
    from hcld_bids.interfaces.harmonize import HarmonizeT1w

    seen = []

    def record(self, volume, style, **kwargs):
        seen.append(torch.get_num_threads())
        self.last_timings, self.last_restoration = {}, [{"weight": 0.0, "noise": None}]
        return np.zeros_like(volume)

    monkeypatch.setattr(Harmonizer, "harmonize", record)
    torch.set_num_threads(2)
    model = open_model(DEMO_MODEL_DIR)
    shape = model.grid.shape
    for name, data in (("in", np.full(shape, 0.5, np.float32)), ("mask", np.ones(shape, np.uint8))):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{name}.nii.gz")
    node = HarmonizeT1w(in_file=str(tmp_path / "in.nii.gz"), mask_file=str(tmp_path / "mask.nii.gz"),
                        model_dir=str(DEMO_MODEL_DIR), model_sha256=model.sha256, target_site=model.sites[0],
                        num_threads=threads)
    node.run(cwd=str(tmp_path))
    assert seen == [threads]


def test_workflow_nodes_declare_omp_nthreads_and_memory(bids_participants, tmp_path):
    config = _config(bids_participants, tmp_path, "participant", "--target-site", "siteA", "--nprocs", "4",
                     "--omp-nthreads", "3", "--mem", "5")
    prepare_directories(config)
    records = collect_inputs(config)
    model = open_model(DEMO_MODEL_DIR)
    workflow = init_hcld_wf(config, records, model, "cpu")
    nodes = {name: workflow.get_node(name) for name in workflow.list_node_names()}
    harmonize = [node for name, node in nodes.items() if name.endswith("harmonization_wf.harmonize")]
    assert len(harmonize) == len(records) == 3
    for node in harmonize:
        assert node.n_procs == 3 and node.inputs.num_threads == 3
        assert node.mem_gb == model.mem_gb > 0.5
    ants = [(name, node) for name, node in nodes.items()
            if ".anat_preproc_wf." in name and name.rsplit(".", 1)[-1] in ANTS_NODES]
    assert len(ants) == len(ANTS_NODES) * 3
    for name, node in ants:
        assert node.n_procs == 3 and node.inputs.num_threads == 3, name
    for name, node in nodes.items():  # every node declares what it needs, and all of it fits under --mem
        assert 0 < node.mem_gb <= 5, name
    settings = plugin_settings(config)
    assert settings["plugin"] == "MultiProc"
    assert settings["plugin_args"]["n_procs"] == 4 and settings["plugin_args"]["memory_gb"] == 5


@pytest.mark.parametrize("threads", [1, 2])
def test_train_level_runs_torch_with_omp_nthreads_threads(threads, bids_participants, tmp_path, monkeypatch,
                                                          restore_torch_threads):
    seen = []
    monkeypatch.setattr(train_module, "add_site_prototypes", lambda config, records: seen.append(
        torch.get_num_threads()) or 0)
    torch.set_num_threads(3)
    config = _config(bids_participants, tmp_path, "train", "--add-site-prototypes", "--nprocs", "2",
                     "--omp-nthreads", str(threads))
    assert train_module.run_train(config, []) == 0
    assert seen == [threads]
