"""docs/hpc.rst: its SLURM scripts run (with stand-ins for sbatch, srun, scontrol and apptainer) and
build command lines that hcld-bids and torchrun accept; every hcld-bids command line on the page uses
existing options; torchrun starts ``-m hcld_bids``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hcld_bids.cli.parser import build_parser
from hcld_bids.cli.run import build_config
from hcld_bids.config import ANALYSIS_LEVELS

REPO = Path(__file__).resolve().parents[2]

# A stand-in for the cluster's commands: records each call as JSON in $SHIM_LOG, then acts like the
# real command as far as the scripts need (sbatch --parsable prints "jobid;cluster", srun runs its
# command, scontrol lists the job's nodes).
SHIM = """#!{python}
import json, os, sys
from pathlib import Path
log = Path(os.environ["SHIM_LOG"])
tool = Path(sys.argv[0]).name
argv = sys.argv[1:]
binds = [value.split(":")[0] for flag, value in zip(argv, argv[1:]) if flag in ("-B", "--bind")]
record = {{"tool": tool, "argv": argv, "cwd": os.getcwd(),
          "bind_sources_exist": [os.path.isdir(b) for b in binds]}}
(log / "{{:03d}}-{{}}.json".format(len(list(log.iterdir())), tool)).write_text(json.dumps(record))
if tool == "sbatch":
    print("4242;cluster1")
elif tool == "scontrol":
    print("node001\\nnode002")
elif tool == "srun":
    os.execvp(argv[0], argv)
"""


@pytest.fixture
def cluster(tmp_path):
    """Directories and an environment in which the documented scripts run against the stand-ins."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    log.mkdir()
    for tool in ("sbatch", "srun", "scontrol", "apptainer"):
        (bin_dir / tool).write_text(SHIM.format(python=sys.executable))
        (bin_dir / tool).chmod(0o755)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SHIM_LOG": str(log),
        "TMPDIR": str(scratch),
        "BIDS_DIR": str(bids),
        "OUTPUT_DIR": str(tmp_path / "derivatives" / "hcld"),
        "SIF": str(tmp_path / "hcld.sif"),
        "TARGET_SITE": "SiteA",
    }
    return {"root": tmp_path, "bids": bids, "scratch": scratch, "log": log, "env": env}


def _script(hpc_blocks, name: str) -> str:
    (code,) = [code for label, _, code in hpc_blocks if label == name]
    return code


def _run(code: str, name: str, cluster, extra_env=None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    directory = cluster["root"] / "scripts"
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(code)
    before = set(cluster["log"].iterdir())
    result = subprocess.run(
        ["bash", name], cwd=directory, capture_output=True, text=True, timeout=60,
        env={**cluster["env"], **(extra_env or {})},
    )
    calls = [json.loads(p.read_text()) for p in sorted(set(cluster["log"].iterdir()) - before)]
    return result, calls


def _hcld_config(argv: list[str], image: str):
    """The hcld-bids arguments after ``image`` in an apptainer command line, with container paths
    mapped back to the bound host paths, checked by hcld-bids itself (parser and build_config)."""
    binds = {}
    for flag, value in zip(argv, argv[1:]):
        if flag in ("-B", "--bind"):
            source, destination = value.split(":")[:2]
            binds[destination] = source
    arguments = argv[argv.index(image) + 1 :]

    def host(value: str) -> str:
        for destination, source in binds.items():
            if value == destination or value.startswith(destination + "/"):
                return source + value[len(destination) :]
        return value

    return build_config(build_parser().parse_args([host(a) for a in arguments]))


def _write_participants(cluster, text: str) -> None:
    (cluster["bids"] / "participants.tsv").write_text(text)


def test_submit_script_sends_one_array_task_per_participant_then_the_group_job(hpc_blocks, cluster):
    # no newline after the last participant, blank lines after it: both must not change the count
    _write_participants(cluster, "participant_id\tsite\nsub-01\tA\nsub-02\tB\nsub-03\tA")
    code = _script(hpc_blocks, "submit.sh")
    code, replaced = re.subn(r"^export (\w+)=.*$", lambda m: f'export {m.group(1)}="${{{m.group(1)}}}"',
                             code, flags=re.M)
    assert replaced == 4  # the four settings at the top come from the test environment instead
    result, calls = _run(code, "submit.sh", cluster)
    assert result.returncode == 0, result.stderr
    assert [c["tool"] for c in calls] == ["sbatch", "sbatch"]
    assert calls[0]["argv"] == ["--parsable", "--array=2-4%50", "participant.sbatch"]
    assert calls[1]["argv"] == ["--dependency=afterok:4242", "group.sbatch"]
    scripts = Path(calls[0]["cwd"])
    assert (scripts / "logs").is_dir() and Path(cluster["env"]["OUTPUT_DIR"]).is_dir()

    _write_participants(cluster, "participant_id\tsite\nsub-01\tA\nsub-02\tB\n\n\n")
    result, calls = _run(code, "submit.sh", cluster)
    assert calls[0]["argv"][1] == "--array=2-3%50"

    _write_participants(cluster, "participant_id\tsite\n")
    result, calls = _run(code, "submit.sh", cluster)
    assert result.returncode == 66 and calls == [] and "lists no participant" in result.stderr


@pytest.mark.parametrize("task_id, label", [(2, "01"), (3, "02"), (4, "3b")])
def test_each_array_task_runs_its_own_participant_with_the_granted_resources(hpc_blocks, cluster, task_id,
                                                                             label):
    _write_participants(cluster, "participant_id\tsite\nsub-01\tA\nsub-02\tB\nsub-3b\tA")
    slurm = {"SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_ARRAY_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "4",
             "SLURM_MEM_PER_NODE": "16000", "CUDA_VISIBLE_DEVICES": "1"}
    result, calls = _run(_script(hpc_blocks, "participant.sbatch"), "participant.sbatch", cluster, slurm)
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call["tool"] == "apptainer" and call["argv"][:3] == ["run", "--nv", "--cleanenv"]
    assert call["argv"][3:5] == ["--env", "CUDA_VISIBLE_DEVICES=1"]
    assert all(call["bind_sources_exist"])  # the node-local work directory existed during the run
    config = _hcld_config(call["argv"], cluster["env"]["SIF"])
    assert config.execution.analysis_level == "participant"
    assert config.execution.participant_label == [label]
    assert config.execution.bids_dir == cluster["bids"]
    assert str(config.execution.output_dir) == cluster["env"]["OUTPUT_DIR"]
    assert config.execution.work_dir.parent == cluster["scratch"]
    assert not config.execution.work_dir.exists()  # removed when the job ended
    assert config.workflow.target_site == "SiteA"
    assert (config.nipype.nprocs, config.nipype.mem_gb) == (4, 16.0)


def test_array_task_without_a_participant_on_its_line_fails_before_running(hpc_blocks, cluster):
    _write_participants(cluster, "participant_id\tsite\nsub-01\tA\n\nsub-03\tA\n")
    slurm = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_CPUS_PER_TASK": "4", "SLURM_MEM_PER_NODE": "16000"}
    result, calls = _run(_script(hpc_blocks, "participant.sbatch"), "participant.sbatch", cluster, slurm)
    assert result.returncode == 65 and calls == []
    assert "line 3" in result.stderr and "participants.tsv" in result.stderr


def test_array_task_without_cuda_visible_devices_passes_no_gpu_setting(hpc_blocks, cluster):
    _write_participants(cluster, "participant_id\nsub-01\n")
    slurm = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "8000"}
    result, calls = _run(_script(hpc_blocks, "participant.sbatch"), "participant.sbatch", cluster, slurm)
    assert result.returncode == 0, result.stderr
    assert "--env" not in calls[0]["argv"]


@pytest.mark.parametrize("task_id, labels", [(1, ["01", "02"]), (2, ["3b", "04"]), (3, ["05"])])
def test_chunk_task_runs_its_group_of_participants_in_one_job_on_all_its_cores(hpc_blocks, cluster, task_id,
                                                                              labels):
    _write_participants(cluster, "participant_id\tsite\nsub-01\tA\nsub-02\tB\nsub-3b\tA\nsub-04\tA\nsub-05\tB\n\n")
    slurm = {"SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_CPUS_PER_TASK": "32", "SLURM_MEM_PER_NODE": "120000",
             "CUDA_VISIBLE_DEVICES": "0", "CHUNK": "2"}
    result, calls = _run(_script(hpc_blocks, "participant-chunk.sbatch"), "participant-chunk.sbatch", cluster, slurm)
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call["argv"][3:5] == ["--env", "CUDA_VISIBLE_DEVICES=0"] and all(call["bind_sources_exist"])
    config = _hcld_config(call["argv"], cluster["env"]["SIF"])
    assert config.execution.participant_label == labels
    assert (config.nipype.nprocs, config.nipype.omp_nthreads, config.nipype.mem_gb) == (32, 1, 120.0)
    slurm["SLURM_ARRAY_TASK_ID"] = "4"  # past the last participant
    result, calls = _run(_script(hpc_blocks, "participant-chunk.sbatch"), "participant-chunk.sbatch", cluster, slurm)
    assert result.returncode == 65 and calls == [] and "name no participant" in result.stderr


def test_group_job_runs_the_group_level_on_the_shared_output(hpc_blocks, cluster):
    slurm = {"SLURM_JOB_ID": "4243", "SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "8192"}
    result, calls = _run(_script(hpc_blocks, "group.sbatch"), "group.sbatch", cluster, slurm)
    assert result.returncode == 0, result.stderr
    (call,) = calls
    config = _hcld_config(call["argv"], cluster["env"]["SIF"])
    assert config.execution.analysis_level == "group"
    assert str(config.execution.output_dir) == cluster["env"]["OUTPUT_DIR"]
    assert (config.nipype.nprocs, config.nipype.mem_gb) == (2, 8.192)


def test_multinode_training_starts_one_torchrun_per_node_meeting_at_the_first(hpc_blocks, cluster):
    from torch.distributed.run import get_args_parser

    train_work = cluster["root"] / "train-work"
    train_work.mkdir()
    slurm = {"SLURM_JOB_ID": "777", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[001-002]",
             "SLURM_CPUS_PER_TASK": "32", "TRAIN_WORK_DIR": str(train_work)}
    code = _script(hpc_blocks, "train-multinode.sbatch")
    result, calls = _run(code, "train-multinode.sbatch", cluster, slurm)
    assert result.returncode == 0, result.stderr
    assert [c["tool"] for c in calls] == ["scontrol", "srun", "apptainer"]
    assert re.search(r"^#SBATCH --ntasks-per-node=1$", code, flags=re.M)  # srun: one torchrun per node
    argv = calls[2]["argv"]
    assert argv[:3] == ["exec", "--nv", "--cleanenv"]
    image_index = argv.index(cluster["env"]["SIF"])
    assert argv[image_index + 1] == "torchrun"
    torchrun = get_args_parser().parse_args(argv[image_index + 2 :])
    assert (torchrun.nnodes, torchrun.nproc_per_node) == ("2", "4")
    rendezvous = (torchrun.rdzv_backend, torchrun.rdzv_endpoint, torchrun.rdzv_id)
    assert rendezvous == ("c10d", "node001:29500", "777")
    assert torchrun.module and torchrun.training_script == "hcld_bids"
    config = _hcld_config(argv[: image_index + 1] + torchrun.training_script_args, cluster["env"]["SIF"])
    assert config.execution.analysis_level == "train"
    assert config.execution.work_dir == train_work
    assert config.nipype.nprocs == 8  # a quarter of the node's 32 CPUs for each of its 4 processes


def _command_lines(text: str) -> list[list[str]]:
    """Shell command lines of a code block (continuations joined, comments dropped), as tokens."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    # image builds take no hcld-bids arguments (and quote in ways shlex does not follow)
    return [shlex.split(line) for line in lines
            if line and not line.startswith(("#", "docker build", "apptainer build"))]


def _hcld_bids_arguments(tokens: list[str]) -> list[str] | None:
    """The arguments that reach hcld-bids in a command line, or None if it does not run hcld-bids."""
    start = None
    for index, token in enumerate(tokens):
        previous = tokens[index - 1] if index else ""
        program = token == "hcld-bids" and previous != "-t"  # not the image name given to docker build
        image = (token.endswith(".sif") and "=" not in token) or token == "$SIF"
        module = token == "hcld_bids" and previous == "-m"
        if program or image or module:
            start = index + 1
    return None if start is None else tokens[start:]


def _documented_command_lines(hpc_blocks, definition) -> list[list[str]]:
    texts = [code for _, language, code in hpc_blocks if language == "bash"]
    help_text = "\n".join(definition.sections["help"])  # prose around one command
    texts.extend(m.group(0) for m in re.finditer(r"^\s*apptainer run(?:[^\n]*\\\n)*[^\n]*", help_text, re.M))
    header = [line[1:] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("#   ")]
    texts.append("\n".join(header))
    commands = []
    for text in texts:
        for tokens in _command_lines(text):
            arguments = _hcld_bids_arguments(tokens)
            if arguments is not None:
                commands.append(arguments)
    return commands


def test_every_documented_hcld_bids_command_uses_existing_options(hpc_blocks, definition):
    parser = build_parser()
    options = set(parser._option_string_actions)
    commands = _documented_command_lines(hpc_blocks, definition)
    assert len(commands) >= 10  # docker, apptainer, SLURM scripts, torchrun variants, %help, Dockerfile
    for arguments in commands:
        positional, rest = arguments[:3], arguments[3:]
        assert not any(a.startswith("-") for a in positional), arguments
        assert positional[2] in ANALYSIS_LEVELS, arguments
        for token in rest:
            if token.startswith("-"):
                assert token.split("=", 1)[0] in options, f"{token} is not an hcld-bids option: {arguments}"


def test_documented_docker_build_arguments_are_arguments_of_the_dockerfile(hpc_blocks, dockerfile):
    texts = [code for _, _, code in hpc_blocks] + [(REPO / "Dockerfile").read_text(),
                                                   (REPO / "docs" / "hpc.rst").read_text()]
    names = {name for text in texts for name in re.findall(r"--build-arg\s+(\w+)=", text)}
    assert {"VERSION", "VCS_REF", "TORCH_INDEX_URL"} <= names
    assert names <= set(dockerfile.args)


def test_plugin_file_in_the_docs_is_docs_plugin_yml(hpc_blocks):
    import yaml

    (block,) = [code for label, _, code in hpc_blocks if label == "plugin-file"]
    assert yaml.safe_load(block) == yaml.safe_load((REPO / "docs" / "plugin.yml").read_text())


def test_plugin_file_sets_up_multiproc_as_its_comments_say():
    import inspect

    from nipype.pipeline.plugins import base, multiproc

    from hcld_bids.cli.run import load_plugin_file

    name, plugin_args = load_plugin_file(REPO / "docs" / "plugin.yml")
    assert name == "MultiProc"
    plugin = multiproc.MultiProcPlugin(plugin_args=plugin_args)
    try:
        assert plugin.processors == plugin_args["n_procs"]
        assert plugin.memory_gb == plugin_args["memory_gb"]
        assert plugin.n_gpu_procs == plugin_args["n_gpu_procs"]
        assert plugin.raise_insufficient is False
    finally:
        plugin.pool.shutdown()
    source = inspect.getsource(multiproc) + inspect.getsource(base)
    read = set(re.findall(r"plugin_args\.get\(\s*[\"'](\w+)", source))
    assert set(plugin_args) <= read  # no key that nipype would silently ignore


def test_slurmgraph_example_uses_arguments_that_the_plugin_reads(hpc_blocks):
    import inspect

    import yaml
    from nipype.pipeline import plugins

    (block,) = [code for _, language, code in hpc_blocks if language == "yaml" and "SLURMGraph" in code]
    content = yaml.safe_load(block)
    plugin_class = getattr(plugins, content["plugin"] + "Plugin")
    source = inspect.getsource(plugin_class)
    for key in content["plugin_args"]:
        assert f'"{key}" in kwargs["plugin_args"]' in source, key


def test_torchrun_starts_hcld_bids_as_a_module_in_every_process():
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    # the repository first, so that an uninstalled checkout works too
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node=2", "-m", "hcld_bids", "--version"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    version = subprocess.run([sys.executable, "-m", "hcld_bids", "--version"], capture_output=True, text=True,
                             timeout=60, env=env, cwd=REPO).stdout.strip()
    assert version.startswith("hcld-bids ")
    assert result.stdout.splitlines() == [version, version]
