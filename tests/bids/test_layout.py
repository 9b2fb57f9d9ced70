"""T1w selection with pybids: what is returned for each layout, labels, filters, and the shared index."""

import json
import multiprocessing
import os

import pytest

from hcld_bids.bids.layout import T1wRecord, collect_t1w, load_bids_filters, open_layout
from hcld_bids.errors import MissingInputError, NoDataError, UsageError
from hcld_bids.testing import make_bids_dataset


@pytest.fixture(scope="module")
def sessions_layout(bids_sessions, tmp_path_factory):
    return open_layout(bids_sessions, work_dir=tmp_path_factory.mktemp("work"))


def _rel(records):
    return [r.relpath for r in records]


def test_all_t1w_of_the_participants_layout_in_subject_order(bids_participants):
    records = collect_t1w(open_layout(bids_participants))
    assert _rel(records) == [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-03/anat/sub-03_T1w.nii.gz",
    ]
    first = records[0]
    assert first.path == bids_participants / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert (first.subject, first.session, first.run, first.acquisition, first.site) == ("01", None, None, None, None)
    assert first.entities["suffix"] == "T1w" and first.entities["datatype"] == "anat"
    assert first.metadata["Manufacturer"] == "Philips"


def test_sessions_and_runs_are_returned_in_numeric_run_order(sessions_layout):
    records = collect_t1w(sessions_layout)
    assert [(r.subject, r.session, r.run) for r in records] == [
        ("01", "a", 1), ("01", "a", 2), ("01", "b", 1), ("01", "b", 2),
        ("02", "a", 1), ("02", "a", 2), ("02", "b", 1), ("02", "b", 2),
    ]
    assert records[3].relpath == "sub-01/ses-b/anat/sub-01_ses-b_run-2_T1w.nii.gz"
    assert records[3].metadata["ImageTypeText"][3] == "NORM"  # run 2 is the normalized Siemens scan


def test_run_order_is_numeric_not_alphabetic(tmp_path):
    ents = {"suffix": "T1w"}
    records = [
        T1wRecord(path=tmp_path / n, relpath=n, subject="01", session=None, run=r, acquisition=None,
                  entities=ents, metadata={})
        for n, r in (("r10", 10), ("r2", 2))
    ]
    assert [r.run for r in sorted(records, key=T1wRecord.sort_key)] == [2, 10]


def test_metadata_is_inherited_from_subject_level_sidecars(bids_scanner):
    records = collect_t1w(open_layout(bids_scanner))
    assert [(r.subject, r.metadata["Manufacturer"]) for r in records] == [
        ("01", "Philips"), ("02", "Siemens"), ("03", "UIH")
    ]


def test_participant_labels_select_subjects(sessions_layout):
    records = collect_t1w(sessions_layout, participant_label=["02"])
    assert {r.subject for r in records} == {"02"} and len(records) == 4


def test_session_labels_select_sessions(sessions_layout):
    records = collect_t1w(sessions_layout, participant_label=["01"], session_label=["b"])
    assert _rel(records) == [
        "sub-01/ses-b/anat/sub-01_ses-b_run-1_T1w.nii.gz",
        "sub-01/ses-b/anat/sub-01_ses-b_run-2_T1w.nii.gz",
    ]


def test_unknown_participant_label_lists_available_ones(sessions_layout):
    with pytest.raises(NoDataError, match=r"sub-07.*available: sub-01, sub-02") as info:
        collect_t1w(sessions_layout, participant_label=["01", "07"])
    assert info.value.exit_code == 18


def test_unknown_session_label_is_no_data(sessions_layout):
    with pytest.raises(NoDataError, match="ses-c"):
        collect_t1w(sessions_layout, session_label=["c"])


def test_filters_narrow_the_query(sessions_layout):
    records = collect_t1w(sessions_layout, bids_filters={"t1w": {"run": 2, "session": "a"}})
    assert _rel(records) == [
        "sub-01/ses-a/anat/sub-01_ses-a_run-2_T1w.nii.gz",
        "sub-02/ses-a/anat/sub-02_ses-a_run-2_T1w.nii.gz",
    ]


def test_filters_matching_nothing_are_no_data(sessions_layout):
    with pytest.raises(NoDataError, match="acquisition=mprage"):
        collect_t1w(sessions_layout, bids_filters={"t1w": {"acquisition": "mprage"}})


def test_null_filter_means_entity_absent(sessions_layout, bids_participants):
    with pytest.raises(NoDataError):
        collect_t1w(sessions_layout, bids_filters={"t1w": {"session": None}})
    assert len(collect_t1w(open_layout(bids_participants), bids_filters={"t1w": {"session": None}})) == 3


def test_filter_file_is_read_and_other_queries_ignored(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"t1w": {"session": "a"}, "bold": {"task": "rest"}}))
    assert load_bids_filters(path) == {"t1w": {"session": "a"}, "bold": {"task": "rest"}}
    assert load_bids_filters(None) == {}


def test_filter_file_errors_name_the_file(tmp_path):
    with pytest.raises(MissingInputError, match="nope.json"):
        load_bids_filters(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{'t1w': }")
    with pytest.raises(UsageError, match="bad.json is not valid JSON"):
        load_bids_filters(bad)
    bad.write_text('["t1w"]')
    with pytest.raises(UsageError, match="bad.json must hold"):
        load_bids_filters(bad)


def test_index_is_built_once_in_the_work_dir_and_reused(bids_participants, tmp_path):
    open_layout(bids_participants, work_dir=tmp_path)
    (db_dir,) = (tmp_path / "bids_db").iterdir()
    sqlite = db_dir / "layout_index.sqlite"
    stamp = sqlite.stat().st_mtime_ns
    layout = open_layout(bids_participants, work_dir=tmp_path)
    assert sqlite.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "bids_db").iterdir()] == [db_dir.name]
    assert len(collect_t1w(layout)) == 3


def test_changed_dataset_gets_a_new_index(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, subjects={"01": "uih"})
    work = tmp_path / "work"
    open_layout(root, work_dir=work)
    (root / "sub-01" / "anat" / "sub-01_T1w.nii.gz").rename(root / "sub-01" / "anat" / "sub-01_run-1_T1w.nii.gz")
    records = collect_t1w(open_layout(root, work_dir=work))
    assert _rel(records) == ["sub-01/anat/sub-01_run-1_T1w.nii.gz"]
    assert len(list((work / "bids_db").iterdir())) == 2


def test_database_dir_is_reused_and_must_index_the_same_dataset(bids_participants, bids_scanner, tmp_path):
    db = tmp_path / "db"
    assert len(collect_t1w(open_layout(bids_participants, database_dir=db))) == 3
    assert (db / "layout_index.sqlite").is_file()
    assert len(collect_t1w(open_layout(bids_participants, database_dir=db))) == 3
    with pytest.raises(UsageError, match="indexes .*participants, not .*scanner"):
        open_layout(bids_scanner, database_dir=db)


def test_non_empty_database_dir_without_index_is_refused(bids_participants, tmp_path):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds no pybids index"):
        open_layout(bids_participants, database_dir=tmp_path / "db")


def _count_t1w(args):
    root, work = args
    return len(collect_t1w(open_layout(root, work_dir=work)))


def test_concurrent_jobs_share_one_complete_index(bids_sessions, tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        counts = pool.map(_count_t1w, [(bids_sessions, tmp_path)] * 3)
    assert counts == [8, 8, 8]
    entries = os.listdir(tmp_path / "bids_db")
    assert len(entries) == 1 and not entries[0].startswith(".")


def test_an_index_finished_second_is_dropped_for_the_first(bids_participants, tmp_path):
    from hcld_bids.bids import layout as layout_module

    final = tmp_path / "db"
    layout_module._build_index(bids_participants, final, validate=False)
    first = (final / "layout_index.sqlite").stat().st_ino
    layout_module._build_index(bids_participants, final, validate=False)  # loses the race
    assert (final / "layout_index.sqlite").stat().st_ino == first
    assert os.listdir(tmp_path) == ["db"]


def test_a_new_index_is_built_in_memory_written_once_and_not_reopened(bids_participants, tmp_path, monkeypatch):
    """pybids commits every step of an index built in a file (a second per dataset, most of it syncs):
    the index is built in memory, saved in one go, and the layout in memory is what the run queries."""
    from hcld_bids.bids import layout as layout_module

    opened = []
    original = layout_module._open_indexed

    def spy(bids_dir, database_dir, validate):
        opened.append(database_dir)
        return original(bids_dir, database_dir, validate)

    monkeypatch.setattr(layout_module, "_open_indexed", spy)
    fresh = collect_t1w(open_layout(bids_participants, work_dir=tmp_path))
    assert opened == [None]
    (db_dir,) = (tmp_path / "bids_db").iterdir()
    reopened = collect_t1w(open_layout(bids_participants, work_dir=tmp_path))
    assert opened == [None, db_dir]
    assert [(r.relpath, r.metadata) for r in fresh] == [(r.relpath, r.metadata) for r in reopened]
