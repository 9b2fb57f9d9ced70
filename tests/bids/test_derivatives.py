"""The derivatives dataset: description, .bidsignore, README, file names and BIDS URIs."""

import json
import multiprocessing
from pathlib import Path

import pytest

from hcld_bids import CODE_URL, __version__
from hcld_bids.bids.derivatives import (
    BIDSIGNORE_PATTERNS,
    bids_uri,
    container_info,
    dataset_description,
    derivative_path,
    init_derivatives_dataset,
    write_dataset_description,
)


def test_description_content(bids_participants, monkeypatch):
    for name in ("HCLD_CONTAINER_TYPE", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(name, raising=False)
    assert dataset_description(bids_participants) == {
        "Name": "hcld-bids: harmonized T1w images of hcld-bids test dataset",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "hcld-bids", "Version": __version__, "CodeURL": CODE_URL}],
        "SourceDatasets": [{"URL": bids_participants.as_uri()}],
        "DatasetLinks": {"raw": bids_participants.as_uri()},
        "HowToAcknowledge": "Cite hcld-bids and the HCLD method; see logs/CITATION.md for the methods text.",
        "License": "BSD-2-Clause",
    }


def test_source_dataset_doi_is_copied(tmp_path):
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "ds", "DatasetDOI": "doi:10.1/x"}))
    assert dataset_description(tmp_path, container={})["SourceDatasets"] == [
        {"URL": tmp_path.as_uri(), "DOI": "doi:10.1/x"}
    ]


def test_container_comes_from_the_environment():
    assert container_info({}) is None
    assert container_info({"HCLD_CONTAINER_TYPE": "docker", "HCLD_CONTAINER_TAG": "hcld/hcld-bids:0.1"}) == {
        "Type": "docker",
        "Tag": "hcld/hcld-bids:0.1",
    }
    env = {"HCLD_CONTAINER_TYPE": "docker", "HCLD_CONTAINER_TAG": "t", "APPTAINER_CONTAINER": "/x.sif"}
    assert container_info(env) == {"Type": "apptainer", "Tag": "t"}


def test_container_is_written_into_generated_by(tmp_path, bids_participants):
    path = write_dataset_description(tmp_path, bids_participants, container={"Type": "docker", "Tag": "x:1"})
    assert json.loads(path.read_text())["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": "x:1"}


def test_description_is_not_rewritten_when_unchanged(tmp_path, bids_participants):
    path = write_dataset_description(tmp_path, bids_participants, container={})
    inode = path.stat().st_ino
    write_dataset_description(tmp_path, bids_participants, container={})
    assert path.stat().st_ino == inode
    write_dataset_description(tmp_path, bids_participants, container={"Type": "docker"})
    assert path.stat().st_ino != inode


def _write_description(args):
    output_dir, bids_dir, tag = args
    for _ in range(20):
        # Writers disagree (different tags), so every call replaces the file while others read it.
        init_derivatives_dataset(output_dir, bids_dir, container={"Type": "docker", "Tag": tag})
        json.loads((Path(output_dir) / "dataset_description.json").read_text())
    return True


def test_concurrent_writers_leave_one_complete_description(tmp_path, bids_participants):
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        assert pool.map(_write_description, [(tmp_path, bids_participants, str(i)) for i in range(4)]) == [True] * 4
    tag = json.loads((tmp_path / "dataset_description.json").read_text())["GeneratedBy"][0]["Container"]["Tag"]
    assert tag in {"0", "1", "2", "3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bidsignore", "README", "dataset_description.json"]


def test_bidsignore_keeps_user_lines_and_adds_ours_once(tmp_path, bids_participants):
    (tmp_path / ".bidsignore").write_text("extra/\n")
    init_derivatives_dataset(tmp_path, bids_participants, container={})
    init_derivatives_dataset(tmp_path, bids_participants, container={})
    assert (tmp_path / ".bidsignore").read_text().splitlines() == ["extra/", *BIDSIGNORE_PATTERNS]


def test_bids_uris_of_raw_and_derivative_files(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    assert bids_uri(raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz", raw, out) == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert bids_uri(out / "sub-01" / "anat" / "x.nii.gz", raw, out) == "bids::sub-01/anat/x.nii.gz"
    assert bids_uri("bids:raw:already", raw) == "bids:raw:already"
    with pytest.raises(ValueError, match="neither in BIDS_DIR nor in OUTPUT_DIR"):
        bids_uri(tmp_path / "work" / "x.nii.gz", raw, out)


@pytest.mark.parametrize(
    ("entities", "expected"),
    [
        ({"subject": "01", "space": "MNI152NLin6Asym", "desc": "preproc", "suffix": "T1w", "extension": ".nii.gz"},
         "sub-01/anat/sub-01_space-MNI152NLin6Asym_desc-preproc_T1w.nii.gz"),
        ({"subject": "01", "session": "a", "space": "MNI152NLin6Asym", "desc": "brain", "suffix": "mask",
          "extension": ".nii.gz"},
         "sub-01/ses-a/anat/sub-01_ses-a_space-MNI152NLin6Asym_desc-brain_mask.nii.gz"),
        ({"subject": "01", "session": "a", "run": 2, "space": "MNI152NLin6Asym", "desc": "harmonized",
          "suffix": "T1w", "extension": ".json"},
         "sub-01/ses-a/anat/sub-01_ses-a_run-2_space-MNI152NLin6Asym_desc-harmonized_T1w.json"),
        ({"subject": "01", "desc": "harmonized", "suffix": "T1w", "extension": ".nii.gz"},
         "sub-01/anat/sub-01_desc-harmonized_T1w.nii.gz"),
        ({"subject": "01", "from": "T1w", "to": "MNI152NLin6Asym", "mode": "image", "suffix": "xfm",
          "extension": ".txt"},
         "sub-01/anat/sub-01_from-T1w_to-MNI152NLin6Asym_mode-image_xfm.txt"),
    ],
)
def test_derivative_names_follow_the_nipreps_patterns(entities, expected):
    assert derivative_path(entities) == Path(expected)


def test_derivative_path_can_be_absolute_and_refuses_unknown_entities(tmp_path):
    assert derivative_path({"subject": "1", "suffix": "T1w", "extension": ".nii.gz"}, tmp_path) == (
        tmp_path / "sub-1" / "anat" / "sub-1_T1w.nii.gz"
    )
    with pytest.raises(ValueError, match="no derivative file-name pattern"):
        derivative_path({"subject": "01", "suffix": "T1w", "extension": ".nii.gz", "flavour": "x"})


def test_bids_uri_of_a_file_reached_through_a_linked_bids_dir(tmp_path):
    real = tmp_path / "real"
    (real / "sub-01" / "anat").mkdir(parents=True)
    (real / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(real)
    # pybids hands out resolved paths while the user named BIDS_DIR through the link
    assert bids_uri(real / "sub-01" / "anat" / "sub-01_T1w.nii.gz", link) == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert bids_uri(link / "sub-01" / "anat" / "sub-01_T1w.nii.gz", real) == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
