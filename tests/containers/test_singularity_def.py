"""singularity.def: built from the Docker image, runs hcld-bids with all arguments, and agrees with the
Dockerfile and the provenance code about its environment."""

from __future__ import annotations

import re
import shlex
import subprocess

from hcld_bids.bids import derivatives


def _docker_build_tag(hpc_blocks) -> str:
    (build,) = [code for _, _, code in hpc_blocks if code.startswith("docker build")]
    return re.match(r"docker build -t (\S+)", build).group(1)


def test_definition_bootstraps_from_the_image_the_docs_build(definition, hpc_blocks):
    assert definition.header["Bootstrap"] == "docker-daemon"
    repository, _, tag = definition.header["From"].partition(":")
    built = _docker_build_tag(hpc_blocks)
    assert (repository, tag) == (built.partition(":")[0], built.partition(":")[2] or "latest")


def test_runscript_execs_the_entrypoint_with_every_argument(definition, dockerfile):
    assert definition.lines("runscript") == [f'exec {shlex.join(dockerfile.entrypoint)} "$@"']


def test_runscript_passes_arguments_verbatim(definition, tmp_path):
    # Run the runscript's body with a stand-in hcld-bids that prints its arguments, one per line.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hcld-bids").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (bin_dir / "hcld-bids").chmod(0o755)
    script = "\n".join(definition.lines("runscript")) + "\n"
    arguments = ["/data", "/out", "participant", "--target-site", "Site A", "--participant-label", "01", ""]
    result = subprocess.run(
        ["sh", "-c", script, "runscript", *arguments],
        capture_output=True, text=True, timeout=30, env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert result.returncode == 0
    assert result.stdout.split("\n")[:-1] == arguments


def test_environment_keeps_templates_and_names_the_container_type(definition, dockerfile):
    exported = dict(line.removeprefix("export ").split("=", 1) for line in definition.lines("environment"))
    assert exported["TEMPLATEFLOW_HOME"] == dockerfile.pairs("ENV")["TEMPLATEFLOW_HOME"]
    assert exported[derivatives.CONTAINER_TYPE_ENV] == "apptainer"
    docker_env = {k: dockerfile.resolve(v) for k, v in dockerfile.pairs("ENV").items()}
    info = derivatives.container_info({**docker_env, **exported, "SINGULARITY_CONTAINER": "/x/hcld.sif"})
    assert info["Type"] == "singularity"  # the runtime's own variable decides


def test_labels_match_the_dockerfile_labels(definition, dockerfile):
    labels = dict(line.split(None, 1) for line in definition.lines("labels"))
    docker_labels = dockerfile.pairs("LABEL")
    assert labels
    for key, value in labels.items():
        assert docker_labels[key] == value


def test_help_shows_the_documented_apptainer_command(definition, hpc_blocks):
    help_text = re.sub(r"\s*\\\n\s*", " ", "\n".join(definition.sections["help"]))
    documented = [code for _, _, code in hpc_blocks if code.startswith("apptainer run")][0]
    documented = re.sub(r"\s*\\\n\s*", " ", documented).strip()
    assert "apptainer run --nv --cleanenv -B" in help_text and "participant --target-site" in help_text
    # the same options in the same order as the documented command
    def options(text):
        return re.findall(r"(?<![\w/])-{1,2}[a-zA-Z][\w-]*", text)
    expected = options(documented)
    assert options(help_text.split("apptainer run", 1)[1])[: len(expected)] == expected


def test_build_time_self_test_runs_the_program(definition, dockerfile):
    assert definition.lines("test") == [f"{dockerfile.entrypoint[0]} --version"]
