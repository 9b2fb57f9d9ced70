"""The test-dataset generator writes the layouts it promises, and they are valid BIDS."""

import json
import subprocess

import nibabel as nb
import pytest

from hcld_bids.bids.validation import find_validator
from hcld_bids.errors import MissingInputError
from hcld_bids.testing import SCANNERS, find_scans_dir, make_bids_dataset


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _tsv(path):
    lines = path.read_text().splitlines()
    return [line.split("\t") for line in lines]


def test_participants_layout_has_site_column_and_one_t1w_per_subject(bids_participants):
    assert _files(bids_participants) == [
        "LICENSE",
        "README",
        "dataset_description.json",
        "participants.json",
        "participants.tsv",
        "sub-01/anat/sub-01_T1w.json",
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.json",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-03/anat/sub-03_T1w.json",
        "sub-03/anat/sub-03_T1w.nii.gz",
    ]
    assert _tsv(bids_participants / "participants.tsv") == [
        ["participant_id", "site"],
        ["sub-01", "philips"],
        ["sub-02", "siemens"],
        ["sub-03", "uih"],
    ]


def test_images_and_sidecars_are_copies_of_the_vendored_scans(bids_participants, scans_dir):
    copied = bids_participants / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    assert copied.read_bytes() == (scans_dir / f"{SCANNERS['siemens'][0]}.nii.gz").read_bytes()
    sidecar = json.loads((bids_participants / "sub-02" / "anat" / "sub-02_T1w.json").read_text())
    assert sidecar["Manufacturer"] == "Siemens"
    assert nb.load(copied).ndim == 3


def test_sessions_layout_puts_sites_in_sessions_tsv_and_cycles_runs(bids_sessions, scans_dir):
    assert _tsv(bids_sessions / "participants.tsv")[0] == ["participant_id"]
    assert _tsv(bids_sessions / "sub-01" / "sub-01_sessions.tsv") == [
        ["session_id", "site"],
        ["ses-a", "philips"],
        ["ses-b", "siemens"],
    ]
    anat = bids_sessions / "sub-01" / "ses-b" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [
        "sub-01_ses-b_run-1_T1w.json",
        "sub-01_ses-b_run-1_T1w.nii.gz",
        "sub-01_ses-b_run-2_T1w.json",
        "sub-01_ses-b_run-2_T1w.nii.gz",
    ]
    # Siemens runs alternate between its two reconstructions.
    assert (anat / "sub-01_ses-b_run-2_T1w.nii.gz").read_bytes() == (scans_dir / f"{SCANNERS['siemens'][1]}.nii.gz").read_bytes()


def test_scanner_layout_has_no_site_column_and_subject_level_sidecars(bids_scanner):
    assert _tsv(bids_scanner / "participants.tsv")[0] == ["participant_id"]
    assert (bids_scanner / "sub-03" / "sub-03_T1w.json").is_file()
    assert not list(bids_scanner.rglob("anat/*.json"))


def test_missing_site_writes_na_and_labels_can_be_renamed(tmp_path, scans_dir):
    root = make_bids_dataset(
        tmp_path / "ds", scans_dir=scans_dir, missing_site=["02"], site_labels={"uih": "Site U-1"}, site_column="center"
    )
    assert _tsv(root / "participants.tsv") == [
        ["participant_id", "center"],
        ["sub-01", "philips"],
        ["sub-02", "n/a"],
        ["sub-03", "Site U-1"],
    ]


def test_strip_scanner_fields_removes_them_from_sidecars(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, subjects={"01": "uih"}, strip_scanner_fields=True)
    sidecar = json.loads((root / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    assert "Manufacturer" not in sidecar and "DeviceSerialNumber" not in sidecar
    assert sidecar["RepetitionTime"] == 0.00725


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"site_source": "elsewhere"}, "site_source"),
        ({"subjects": {"01": "ge"}}, "unknown scanner"),
        ({"site_source": "sessions"}, "needs sessions"),
        ({"subjects": {"01": {"a": "uih", "b": "philips"}}}, "participants.tsv can hold one site"),
        ({"subjects": {"01": {"a": "uih", "b": "philips"}}, "site_source": "scanner", "sidecar_level": "subject"},
         "sidecar_level='file'"),
        ({"runs": 0}, "runs"),
    ],
)
def test_impossible_requests_are_refused(tmp_path, scans_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, **kwargs)


def test_refuses_to_write_into_a_non_empty_directory(tmp_path, scans_dir):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "x").write_text("")
    with pytest.raises(FileExistsError):
        make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir)


def test_scans_dir_comes_from_env_or_source_tree(monkeypatch, tmp_path, scans_dir):
    monkeypatch.delenv("HCLD_TEST_SCANS", raising=False)
    assert find_scans_dir() == scans_dir.resolve()
    monkeypatch.setenv("HCLD_TEST_SCANS", str(tmp_path))
    with pytest.raises(MissingInputError, match="HCLD_TEST_SCANS"):
        find_scans_dir()


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno not installed")
@pytest.mark.parametrize("fixture", ["bids_sessions", "bids_scanner"])
def test_generated_datasets_pass_bids_validator(request, fixture):
    root = request.getfixturevalue(fixture)
    proc = subprocess.run([find_validator(), "--format", "json", str(root)], capture_output=True, text=True)
    errors = [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []
    assert proc.returncode == 0
