"""Fixtures shared by the whole test suite: the vendored scans and small generated BIDS datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from hcld_bids.testing import make_bids_dataset

SCANS_DIR = Path(__file__).parent / "data" / "t1w"


@pytest.fixture(scope="session")
def scans_dir() -> Path:
    """The real 3 mm T1w scans vendored under tests/data/t1w."""
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
