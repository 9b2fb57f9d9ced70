"""How the participant and train levels run nipype: workers forked from a server that imported what they need,
and a scheduler that submits the next node as soon as a worker finishes one."""

from __future__ import annotations

import time

import pytest

from hcld_bids.cli.parser import build_parser
from hcld_bids.cli.run import build_config, prepare_directories
from hcld_bids.levels import execution


def _step(x):
    import sys

    return x + 1, sorted(m for m in ("ants", "torch", "nipype", "hcld_bids.interfaces.harmonize") if m in sys.modules)


@pytest.fixture
def config(bids_participants, tmp_path):
    config = build_config(build_parser().parse_args([
        str(bids_participants), str(tmp_path / "out"), "participant", "--target-site", "x", "-w",
        str(tmp_path / "work"), "--skip-bids-validation", "--nprocs", "2"]))
    prepare_directories(config)
    return config


def _chain(work, length):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    workflow = pe.Workflow(name="chain", base_dir=str(work))
    nodes = [pe.Node(niu.Function(function=_step, input_names=["x"], output_names=["x", "modules"]), name=f"step{i}")
             for i in range(length)]
    nodes[0].inputs.x = 0
    for a, b in zip(nodes, nodes[1:]):
        workflow.connect(a, "x", b, "x")
    return workflow, nodes[-1]


def test_the_scheduler_submits_the_next_node_when_a_worker_finishes_not_at_its_next_poll(config, monkeypatch):
    # with a 60 s wait between looks, a chain of five nodes would take minutes unless a finished node wakes it
    monkeypatch.setattr(execution, "WAKE_TIMEOUT", 60.0)
    workflow, last = _chain(config.execution.work_dir, 5)
    start = time.monotonic()
    execution.run_workflow(workflow, config)
    assert time.monotonic() - start < 30
    from nipype.utils.filemanip import loadpkl

    result = loadpkl(next((config.execution.work_dir / "chain" / last.name).glob("result_*.pklz")))
    assert result.outputs.x == 5
    # the workers came from the fork server with the preloaded modules
    assert result.outputs.modules == ["ants", "hcld_bids.interfaces.harmonize", "nipype", "torch"]


def test_the_worker_server_is_started_with_the_preload_only_for_multiproc_with_forkserver(config):
    import multiprocessing.forkserver as forkserver

    assert execution.start_worker_server(config)
    assert forkserver._forkserver._forkserver_pid is not None
    config.nipype.plugin_args["mp_context"] = "spawn"
    assert not execution.start_worker_server(config)
    config.nipype.plugin = "Linear"
    assert not execution.start_worker_server(config)


def _missing_file():
    return "/nonexistent/hcld-bids/transform.mat"


@pytest.mark.timeout(120)
def test_a_node_that_fails_before_writing_its_result_ends_the_run_instead_of_hanging(config):
    """nipype's worker raises past its own error capture when a node fails before it has a result file (here
    an input its interface refuses), and nipype then waits for that task forever: it is a failed step."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from hcld_bids.errors import HCLDError
    from hcld_bids.interfaces.harmonize import ItkTransform

    workflow = pe.Workflow(name="broken", base_dir=str(config.execution.work_dir))
    source = pe.Node(niu.Function(function=_missing_file, input_names=[], output_names=["path"]), name="source")
    export = pe.Node(ItkTransform(), name="itk_xfm")
    workflow.connect(source, "path", export, "in_file")
    for node in (source, export):
        node.config = {"execution": {"crashdump_dir": str(config.execution.work_dir / "crash"),
                                     "crashfile_format": "txt"}}
    with pytest.raises(HCLDError, match="failed"):
        execution.run_workflow(workflow, config)
    (crash,) = (config.execution.work_dir / "crash").glob("crash-*itk_xfm*")
    assert "FileNotFoundError" in crash.read_text() or "TraitError" in crash.read_text()


_STOP_PROBE = """
import atexit, os, signal, sys, time
from hcld_bids.cli.parser import build_parser
from hcld_bids.cli.run import build_config
from hcld_bids.levels import execution
from multiprocessing import forkserver

def probe():  # registered first: runs after every other exit handler
    pid = forkserver._forkserver._forkserver_pid
    for _ in range(50):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("ended by signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, flush=True)
            return
        time.sleep(0.1)
    print("still running", flush=True)

if __name__ == "__main__":
    atexit.register(probe)
    config = build_config(build_parser().parse_args(sys.argv[1:]))
    assert execution.start_worker_server(config)
"""


def test_the_worker_server_a_run_started_is_ended_when_the_run_exits(bids_participants, tmp_path):
    """Left alone, the server outlives the run by its own teardown of torch and ANTsPy, holding the run's
    standard output open meanwhile."""
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(_STOP_PROBE)
    args = [str(bids_participants), str(tmp_path / "out"), "participant", "--target-site", "x", "-w",
            str(tmp_path / "work"), "--skip-bids-validation", "--nprocs", "2"]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import signal

    assert out.stdout.split() == ["ended", "by", "signal", str(int(signal.SIGTERM))]
