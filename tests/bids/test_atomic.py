"""Atomic writes: the final name only ever holds a complete file."""

import json
import os
import time

import pytest

from hcld_bids.bids.atomic import (
    TMP_PREFIX,
    atomic_copy,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
    temporary_sibling,
)


def test_temporary_name_is_hidden_and_keeps_the_extension(tmp_path):
    tmp = temporary_sibling(tmp_path / "sub-01_T1w.nii.gz")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(TMP_PREFIX) and tmp.name.endswith("-sub-01_T1w.nii.gz")


def test_write_replaces_existing_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "f.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    atomic_write_json(path, {"c": True})
    assert json.loads(path.read_text()) == {"c": True}
    assert path.read_text().endswith("\n")
    assert os.listdir(path.parent) == ["f.json"]


def test_failure_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "f.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_copy_keeps_content_and_mode(tmp_path):
    src = tmp_path / "src.sh"
    src.write_text("#!/bin/sh\n")
    src.chmod(0o750)
    dst = atomic_copy(src, tmp_path / "d" / "dst.sh")
    assert dst.read_text() == "#!/bin/sh\n"
    assert dst.stat().st_mode & 0o777 == 0o750


def test_stale_temporaries_of_the_run_subjects_are_removed_and_nothing_else(tmp_path):
    def make(rel, age_s, is_dir=False):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if is_dir else path.write_text("x")
        old = time.time() - age_s
        os.utime(path, (old, old))
        return path

    stale = [make(".tmp-sub-01-ab12cd", 600, is_dir=True),                # sink staging dir of a killed job
             make(".tmp-0123456789ab-sub-01.html", 600),                  # its half-written report
             make("sub-01/figures/.tmp-0123456789ab-sub-01_x.svg", 600)]
    kept = [make(".tmp-sub-010-ab12cd", 600, is_dir=True),                # another subject (sub-010)
            make(".tmp-sub-02-ab12cd", 600, is_dir=True),                 # another subject's job
            make("sub-01/anat/.tmp-0123456789ab-sub-01_T1w.nii.gz", 0),   # written now by a running job
            make(".tmp-0123456789ab-dataset_description.json", 600),      # not a subject's
            make("sub-01/anat/sub-01_T1w.nii.gz", 600)]                   # a final file
    started = time.time() - 60
    assert sorted(remove_stale_temporaries(tmp_path, ["01"], older_than=started)) == sorted(stale)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_a_full_disk_keeps_the_old_file_removes_the_temporary_and_names_the_final_path(tmp_path):
    import errno

    path = atomic_write_text(tmp_path / "f.txt", "old")
    with pytest.raises(OSError) as info:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as stream:
                stream.write("half")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises on a full disk
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_an_error_that_names_another_file_is_left_alone(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        with atomic_path(tmp_path / "f.txt"):
            open(tmp_path / "missing" / "x")
    assert info.value.filename == str(tmp_path / "missing" / "x")
