"""Participant report: one page per subject, figures under sub-<label>/figures, flags shown, offline."""

from __future__ import annotations

import json
import shutil

import pytest
from htmlrefs import external, local_files
from reports_fixture import SHIFTED, UNFINISHED

from hcld_bids.errors import NoDataError
from hcld_bids.reports import metrics
from hcld_bids.reports.participant import write_participant_report


@pytest.fixture(scope="module")
def reports(fixture_dirs, tmp_path_factory):
    """Reports of three subjects (sessions, damaged, unfinished) written into a copy of the fixture."""
    output_dir = shutil.copytree(fixture_dirs[0], tmp_path_factory.mktemp("participant") / "out")
    # sub-01 is at the target site already; say it was harmonized with the demo model
    sidecar = next(output_dir.glob("sub-01/anat/*_desc-harmonized_T1w.json"))
    sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), HCLD=dict(
        json.loads(sidecar.read_text())["HCLD"], DemoModel=True))))
    pages = {label: write_participant_report(output_dir, label) for label in ("01", "08", SHIFTED, UNFINISHED)}
    return output_dir, pages


def test_report_is_written_next_to_the_subject_directory(reports):
    output_dir, pages = reports
    assert pages["08"] == output_dir / "sub-08.html"


def test_report_refers_only_to_existing_files_inside_the_subject_figures(reports):
    output_dir, pages = reports
    for label, page in pages.items():
        referenced = local_files(page)
        assert referenced, label
        assert all(path.is_file() for path in referenced), [p for p in referenced if not p.is_file()]
        figures = (output_dir / f"sub-{label}" / "figures").resolve()
        assert all(path.resolve().is_relative_to(figures) for path in referenced)
        assert external(page) == []


def test_report_has_a_section_with_all_figures_per_session(reports):
    output_dir, pages = reports
    text = pages["08"].read_text()
    for session in ("ses-1", "ses-2"):
        assert f'id="sub-08_{session}"' in text
        names = {p.name for p in (output_dir / "sub-08" / "figures").glob(f"sub-08_{session}_*")}
        assert {f"sub-08_{session}_space-MNI152NLin6Asym_res-2_desc-{kind}_T1w.{ext}" for kind, ext in (
            ("axial", "png"), ("coronal", "png"), ("sagittal", "png"), ("difference", "png"),
            ("structure", "png"), ("brainmask", "png"), ("histogram", "svg"))} == names


def test_report_shows_the_provenance_table(reports):
    _, pages = reports
    text = pages["08"].read_text()
    for key, value in (("ModelName", "synthetic-fixture"), ("TargetSite", "siteA"), ("DDIMInversionSteps", "30"),
                       ("IntensityScaling.high_percentile", "99.5")):
        assert f"<th>{key}</th><td class=\"code\">{value}</td>" in text


def test_report_of_a_damaged_output_shows_the_flag_prominently(reports):
    _, pages = reports
    text = pages[SHIFTED].read_text()
    assert 'class="banner bad"' in text
    assert f"<b>{metrics.FLAG_STRUCTURE}</b>" in text
    assert 'class="banner ok"' not in text


def test_report_of_a_clean_output_says_it_passed(reports):
    _, pages = reports
    text = pages["08"].read_text()
    assert text.count('class="banner ok"') == 3 and 'class="banner bad"' not in text  # summary + each session
    assert "Every image passed QC." in text and "demo model" not in text and "already at the target site" not in text


def test_a_failed_image_is_named_at_the_top_of_its_report(reports):
    _, pages = reports
    text = pages[SHIFTED].read_text()
    top = text.split('<section id="summary">')[1].split("<table>")[0]
    assert 'class="banner bad"' in top and f'href="#sub-{SHIFTED}"' in top and metrics.FLAG_STRUCTURE in top


def test_demo_model_and_an_image_already_at_the_target_site_are_said_in_the_report(reports):
    _, pages = reports
    text = pages["01"].read_text()
    top = text.split('<section id="summary">')[1].split("<table>")[0]
    assert "demo model shipped with hcld-bids: for trying the app, not for research" in top
    assert "This image was already at the target site (siteA)" in text
    assert "harmonization changed it by 0.0" in text  # the measured change, from the sidecar


def test_report_of_an_unfinished_image_says_what_is_missing(reports):
    output_dir, pages = reports
    text = pages[UNFINISHED].read_text()
    assert "<b>missing-harmonized</b>" in text
    assert [p.name for p in (output_dir / f"sub-{UNFINISHED}" / "figures").iterdir()] == [
        f"sub-{UNFINISHED}_space-MNI152NLin6Asym_res-2_desc-brainmask_T1w.png"]


def test_subject_may_be_given_with_its_prefix(reports):
    output_dir, _ = reports
    assert write_participant_report(output_dir, f"sub-{UNFINISHED}") == output_dir / f"sub-{UNFINISHED}.html"


def test_report_links_the_methods_text_when_it_exists(reports):
    output_dir, _ = reports
    (output_dir / "logs").mkdir(exist_ok=True)
    (output_dir / "logs" / "CITATION.html").write_text("<html></html>")
    page = write_participant_report(output_dir, UNFINISHED)
    assert output_dir / "logs" / "CITATION.html" in local_files(page)


def test_unknown_subject_is_a_no_data_error(reports):
    output_dir, _ = reports
    with pytest.raises(NoDataError, match="sub-99"):
        write_participant_report(output_dir, "99")


def test_figures_drawn_by_an_executor_give_the_same_report(reports, tmp_path):
    """The participant level hands the figures to worker processes; the page and every figure are the
    same bytes as when drawn one after the other (the page's date aside)."""
    import multiprocessing
    import re
    from concurrent.futures import ProcessPoolExecutor

    output_dir, _ = reports
    copy = shutil.copytree(output_dir, tmp_path / "out")
    figures = copy / "sub-08" / "figures"
    one_by_one = write_participant_report(copy, "08").read_text()
    drawn = {path.name: path.read_bytes() for path in figures.iterdir()}
    shutil.rmtree(figures)
    # the context of the participant level's pool (matplotlib's settings are per process, not per thread)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        page = write_participant_report(copy, "08", executor=pool)

    def text(html):
        return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "", html)

    assert text(page.read_text()) == text(one_by_one)
    assert {path.name: path.read_bytes() for path in figures.iterdir()} == drawn and len(drawn) == 14


def test_writing_a_report_needs_matplotlib_only_where_figures_are_drawn():
    import subprocess
    import sys

    code = ("import sys; import hcld_bids.reports.participant, hcld_bids.levels.participant; "
            "print('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
