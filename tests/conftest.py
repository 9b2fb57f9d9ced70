"""Test-session setup shared by the whole suite.

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
    """Vendored real 3 mm T1w scans (BSD-2, see tests/data/t1w/NOTICE.rst)."""
    return Path(__file__).parent / "data" / "t1w"
