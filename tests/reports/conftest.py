"""Fixtures of the report tests: one OUTPUT_DIR written by the synthetic participant level per session."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from reports_fixture import build_fixture_outputs  # noqa: E402


@pytest.fixture(scope="session")
def fixture_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(OUTPUT_DIR, BIDS_DIR) of tests/reports/reports_fixture.py; read-only for tests (copy to modify)."""
    return build_fixture_outputs(tmp_path_factory.mktemp("reports"))


@pytest.fixture()
def output_copy(fixture_dirs, tmp_path) -> Path:
    """A private copy of the fixture OUTPUT_DIR that a test may change."""
    return Path(shutil.copytree(fixture_dirs[0], tmp_path / "out"))
