"""BIDS validation with bids-validator-deno: errors stop the run (16), passes are remembered."""

import json
import shutil

import pytest

from hcld_bids.bids import validation
from hcld_bids.bids.validation import dataset_fingerprint, validate_bids
from hcld_bids.errors import InvalidBIDSError
from hcld_bids.testing import make_bids_dataset

needs_validator = pytest.mark.skipif(validation.find_validator() is None, reason="bids-validator-deno not installed")


@pytest.fixture
def small_dataset(tmp_path, scans_dir):
    return make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, subjects={"01": "uih"})


@needs_validator
def test_valid_dataset_passes_then_is_remembered(small_dataset, tmp_path):
    report = tmp_path / "logs" / "report.json"
    assert validate_bids(small_dataset, report_path=report, cache_dir=tmp_path / "cache") == "bids-validator-deno"
    assert json.loads(report.read_text())["summary"]["subjects"] == ["01"]
    assert validate_bids(small_dataset, report_path=tmp_path / "r2.json", cache_dir=tmp_path / "cache") == "cached"
    assert not (tmp_path / "r2.json").exists()


@needs_validator
def test_invalid_dataset_names_first_errors_and_the_report(small_dataset, tmp_path):
    (small_dataset / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"")
    report = tmp_path / "report.json"
    with pytest.raises(InvalidBIDSError) as info:
        validate_bids(small_dataset, report_path=report)
    message = info.value.message
    assert info.value.exit_code == 16
    assert "EMPTY_FILE /sub-01/anat/sub-01_T1w.nii.gz" in message
    assert f"full report: {report}" in message
    assert "--skip-bids-validation" in message
    assert report.is_file()


def test_without_the_executable_pybids_checks_the_description(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "find_validator", lambda: None)
    assert validate_bids(small_dataset, report_path=tmp_path / "r.json") == "pybids"
    (small_dataset / "dataset_description.json").unlink()
    with pytest.raises(InvalidBIDSError, match="dataset_description.json"):
        validate_bids(small_dataset, report_path=tmp_path / "r.json")


def test_a_broken_validator_falls_back_to_pybids(small_dataset, tmp_path, monkeypatch):
    fake = tmp_path / "fake-validator"
    fake.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(validation, "find_validator", lambda: str(fake))
    assert validate_bids(small_dataset, report_path=tmp_path / "r.json") == "pybids"


def test_fingerprint_follows_files_but_not_derivatives_or_hidden(small_dataset):
    before = dataset_fingerprint(small_dataset)
    (small_dataset / "derivatives" / "x").mkdir(parents=True)
    (small_dataset / "derivatives" / "x" / "f.txt").write_text("x")
    (small_dataset / ".git").mkdir()
    (small_dataset / ".git" / "HEAD").write_text("x")
    assert dataset_fingerprint(small_dataset) == before
    shutil.copy(small_dataset / "README", small_dataset / "CHANGES")
    assert dataset_fingerprint(small_dataset) != before
    assert dataset_fingerprint(small_dataset, extra="a") != dataset_fingerprint(small_dataset, extra="b")
