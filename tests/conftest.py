"""Test-session setup and fixtures shared by the whole suite.

TemplateFlow reads TEMPLATEFLOW_HOME once, when first imported, and would otherwise try to
download templates. Before any test module is imported, point it at a temporary directory seeded
with the package's offline templates (MNI152NLin6Asym, 2 mm), so tests never touch the network or
the user's cache.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from hcld_bids.testing import make_bids_dataset

_TEMPLATEFLOW_HOME = None


def pytest_configure(config):
    global _TEMPLATEFLOW_HOME
    import sys

    if "templateflow" in sys.modules:  # too late: it already fixed its home
        raise pytest.UsageError("templateflow was imported before tests/conftest.py could set TEMPLATEFLOW_HOME")
    _TEMPLATEFLOW_HOME = Path(tempfile.mkdtemp(prefix="hcld_tests_templateflow_"))
    from hcld_bids.templates import seed_templateflow_home

    seed_templateflow_home(_TEMPLATEFLOW_HOME)
    os.environ["TEMPLATEFLOW_HOME"] = str(_TEMPLATEFLOW_HOME)


def pytest_unconfigure(config):
    if _TEMPLATEFLOW_HOME is not None:
        shutil.rmtree(_TEMPLATEFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def templateflow_home() -> Path:
    """The seeded TEMPLATEFLOW_HOME of this test session (do not delete files from it)."""
    return _TEMPLATEFLOW_HOME


@pytest.fixture(scope="session")
def t1w_dir() -> Path:
    """Vendored real 3 mm T1w scans (BSD-2, see hcld_bids/data/t1w/NOTICE.rst)."""
    return SCANS_DIR


SCANS_DIR = Path(__file__).parents[1] / "hcld_bids" / "data" / "t1w"


@pytest.fixture(scope="session")
def scans_dir() -> Path:
    """The real 3 mm T1w scans vendored under hcld_bids/data/t1w."""
    return SCANS_DIR


@pytest.fixture(scope="session")
def bids_participants(tmp_path_factory) -> Path:
    """Sites in participants.tsv: sub-01 philips, sub-02 siemens, sub-03 uih; no sessions, one run."""
    return make_bids_dataset(tmp_path_factory.mktemp("bids") / "participants", scans_dir=SCANS_DIR)


@pytest.fixture(scope="session")
def bids_sessions(tmp_path_factory) -> Path:
    """Sites in sessions.tsv; sub-01 travels (ses-a philips, ses-b siemens), sub-02 uih at both; 2 runs."""
    return make_bids_dataset(
        tmp_path_factory.mktemp("bids") / "sessions",
        site_source="sessions",
        subjects={"01": {"a": "philips", "b": "siemens"}, "02": "uih"},
        sessions=["a", "b"],
        runs=2,
        scans_dir=SCANS_DIR,
    )


@pytest.fixture(scope="session")
def bids_scanner(tmp_path_factory) -> Path:
    """Sites only in the scanner fields of subject-level sidecars (inherited by each T1w)."""
    return make_bids_dataset(
        tmp_path_factory.mktemp("bids") / "scanner",
        site_source="scanner",
        sidecar_level="subject",
        scans_dir=SCANS_DIR,
    )


@pytest.fixture(autouse=True)
def _bids_dir_never_written(monkeypatch):
    """Every run of the app in this test session proves it wrote nothing into BIDS_DIR.

    Wraps :func:`hcld_bids.cli.run.run` (what ``main`` calls once the arguments are checked): the input
    tree is fingerprinted before and after (less an OUTPUT_DIR at BIDS_DIR/derivatives/<name>), and a test
    whose run changed it fails, whatever its exit code.
    Tests that start the app in a subprocess compare the tree themselves.
    """
    from hcld_bids.cli import run as run_module
    from hcld_bids.testing import tree_snapshot

    original = run_module.run
    changed = []

    def snapshot(config):
        # an OUTPUT_DIR at BIDS_DIR/derivatives/<name> is the one place inside BIDS_DIR the app may write
        bids_dir, output_dir = config.execution.bids_dir, config.execution.output_dir
        own = output_dir.relative_to(bids_dir).as_posix() if output_dir.is_relative_to(bids_dir) else None
        return {rel: value for rel, value in tree_snapshot(bids_dir).items()
                if own is None or not (rel == own or rel.startswith(own + "/") or own.startswith(rel + "/"))}

    def guarded(config):
        bids_dir = config.execution.bids_dir
        before = snapshot(config) if bids_dir.is_dir() else None
        try:
            return original(config)
        finally:
            if before is not None and snapshot(config) != before:
                changed.append(str(bids_dir))

    monkeypatch.setattr(run_module, "run", guarded)
    yield
    assert not changed, f"the app wrote into BIDS_DIR {changed}"
