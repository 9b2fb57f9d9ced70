"""The summaries that end the participant and group levels, read from what they wrote (the report fixture)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from reports_fixture import ERASED, SHIFTED, UNFINISHED


def _record(subject, session=None):
    from hcld_bids.bids.layout import T1wRecord

    ses = f"_ses-{session}" if session else ""
    rel = f"sub-{subject}/{'ses-' + session + '/' if session else ''}anat/sub-{subject}{ses}_T1w.nii.gz"
    return T1wRecord(path=Path("/bids") / rel, relpath=rel, subject=subject, session=session, run=None,
                     acquisition=None, entities={"session": session} if session else {}, metadata={},
                     site="siteB", site_source="participants.tsv")


def test_participant_summary_names_failed_qc_incomplete_images_and_the_reports(fixture_dirs, caplog):
    from hcld_bids.levels.participant import summarize_participants

    out = fixture_dirs[0]
    records = [_record("01"), _record(SHIFTED), _record(ERASED), _record(UNFINISHED)]
    config = SimpleNamespace(execution=SimpleNamespace(output_dir=out, log_file=out / "logs" / "run-x.log"),
                             workflow=SimpleNamespace(target_site="siteA", reference_image=None))
    with caplog.at_level(logging.INFO, logger="hcld_bids"):
        summary = summarize_participants(config, records, SimpleNamespace(demo=True), [out / "sub-01.html"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info[0] == "participant level finished: 3 of 4 image(s) harmonized toward siteA"
    assert any(w.startswith(f"QC FAILED for sub-{SHIFTED}_T1w: structure-changed") for w in warnings)
    assert any(w.startswith(f"QC FAILED for sub-{ERASED}_T1w: structure-changed-locally") for w in warnings)
    assert f"1 image(s) incomplete: sub-{UNFINISHED}" in warnings
    assert any("demo model" in w and "not for research" in w for w in warnings)
    assert "  QC: 2 of 3 image(s) flagged" in info and any("reports: " in line for line in info)
    assert any(line.startswith("  already at the target site siteA: 1 image(s) (sub-01_T1w), harmonized anyway")
               for line in info)
    assert summary["incomplete"] == [f"sub-{UNFINISHED}"] and set(summary["flagged"]) == {f"sub-{SHIFTED}",
                                                                                          f"sub-{ERASED}"}
