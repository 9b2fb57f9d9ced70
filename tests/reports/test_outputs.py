"""Finding the participant level's files in OUTPUT_DIR by their entities."""

from __future__ import annotations

from pathlib import Path

from hcld_bids.reports.outputs import MISSING_HARMONIZED, MISSING_MASK, find_images, find_strays


def _touch(root: Path, relative: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _image(root, prefix, desc, suffix="T1w", directory="sub-01/anat", space="space-MNI152NLin6Asym_res-1_"):
    return _touch(root, f"{directory}/{prefix}_{space}desc-{desc}_{suffix}.nii.gz")


def test_records_pair_harmonized_preproc_and_mask_with_all_entities(tmp_path):
    prefix = "sub-01_ses-pre_acq-mp2rage_rec-norm_run-2"
    directory = "sub-01/ses-pre/anat"
    harmonized = _image(tmp_path, prefix, "harmonized", directory=directory)
    preproc = _image(tmp_path, prefix, "preproc", directory=directory)
    mask = _image(tmp_path, prefix, "brain", "mask", directory=directory)
    _touch(tmp_path, f"{directory}/{prefix}_desc-harmonized_T1w.nii.gz")  # native space: not a record
    [record] = find_images(tmp_path)
    assert (record.harmonized, record.preproc, record.mask) == (harmonized, preproc, mask)
    assert record.prefix == prefix and record.entities["resolution"] == "1" and record.complete
    assert record.problems == ["missing-sidecar"]


def test_preproc_without_harmonized_is_a_record_with_its_problem(tmp_path):
    _image(tmp_path, "sub-01", "preproc")
    [record] = find_images(tmp_path)
    assert not record.complete and record.problems == [MISSING_HARMONIZED, MISSING_MASK]


def test_records_are_found_per_subject_and_sorted(tmp_path):
    for label in ("02", "01", "10"):
        _image(tmp_path, f"sub-{label}", "preproc", directory=f"sub-{label}/anat")
    assert [r.subject for r in find_images(tmp_path)] == ["01", "02", "10"]
    assert [r.subject for r in find_images(tmp_path, "02")] == ["02"]


def test_hidden_staging_files_are_strays_not_outputs(tmp_path):
    _touch(tmp_path, "sub-01/anat/.tmp-0123abcd-sub-01_space-MNI152NLin6Asym_res-1_desc-harmonized_T1w.nii.gz")
    (tmp_path / "sub-01" / ".tmp-99-figures").mkdir()
    assert find_images(tmp_path) == []
    assert [p.name for p in find_strays(tmp_path)] == [
        ".tmp-99-figures", ".tmp-0123abcd-sub-01_space-MNI152NLin6Asym_res-1_desc-harmonized_T1w.nii.gz"]
