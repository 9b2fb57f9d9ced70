"""Group level: the table's columns and values on the fixture, the report's links, scale-independent logic."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from reports_fixture import AGES, ERASED, SHIFTED, SITES, TARGET, UNFINISHED
from htmlrefs import external, local_files

from hcld_bids.errors import NoDataError
from hcld_bids.reports import group, metrics


@pytest.fixture(scope="module")
def group_written(fixture_dirs, tmp_path_factory):
    """The group level run once on a copy of the fixture, one image marked as harmonized by the demo model:
    (OUTPUT_DIR, GroupResult)."""
    output_dir = shutil.copytree(fixture_dirs[0], tmp_path_factory.mktemp("group") / "out")
    sidecar = next(output_dir.glob("sub-07/anat/*_desc-harmonized_T1w.json"))
    content = json.loads(sidecar.read_text())
    content["HCLD"]["DemoModel"] = True
    sidecar.write_text(json.dumps(content))
    return output_dir, group.write_group(output_dir, fixture_dirs[1])


@pytest.fixture(scope="module")
def group_run(group_written):
    """(OUTPUT_DIR, table, html path) of :func:`group_written`."""
    output_dir, result = group_written
    table = pd.read_csv(result.tsv, sep="\t", dtype=str, keep_default_na=False)
    return output_dir, table, result.html


def _row(table, participant, session="n/a"):
    participant = participant if participant.startswith("sub-") else f"sub-{participant}"
    rows = table[(table.participant_id == participant) & (table.session_id == session)]
    assert len(rows) == 1, f"{participant} {session}: {len(rows)} rows"
    return rows.iloc[0]


def _sidecar(output_dir, row) -> dict:
    return json.loads((output_dir / row.image.replace(".nii.gz", ".json")).read_text())


def test_group_table_has_the_documented_columns_in_order(group_run):
    _, table, _ = group_run
    assert list(table.columns) == list(group.COLUMNS)


def test_group_table_has_one_row_per_image_including_sessions_and_the_unfinished_one(group_run):
    _, table, _ = group_run
    assert len(table) == 11
    assert set(table.participant_id) == {f"sub-{label}" for label in SITES}
    assert sorted(table[table.participant_id == "sub-08"].session_id) == ["ses-1", "ses-2"]


def test_group_table_values_come_from_the_sidecars(group_run):
    output_dir, table, _ = group_run
    for _, row in table[table.participant_id != f"sub-{UNFINISHED}"].iterrows():
        sidecar = _sidecar(output_dir, row)
        assert row.site == SITES[row.participant_id[4:]] == sidecar["HCLD"]["SourceSite"]
        assert row.target == TARGET and row.model == "synthetic-fixture"
        for column, key in (("wasserstein_before", "WassersteinInputToTarget"),
                            ("wasserstein_after", "WassersteinOutputToTarget"),
                            ("structure_preservation", "StructurePreservation"), ("mask_dice", "MaskDice")):
            assert float(row[column]) == pytest.approx(sidecar["QC"][key], rel=1e-5)
        walltime = sidecar["HCLD"]["WallTimeSeconds"]
        assert float(row.runtime_total_s) == pytest.approx(walltime["preprocessing"] + walltime["harmonization"])


def test_harmonization_toward_the_target_shrinks_the_distance_of_the_other_sites(group_run):
    _, table, _ = group_run
    moved = table[table.site == "siteB"]
    assert len(moved) == 3
    assert (moved.wasserstein_after.astype(float) < 0.25 * moved.wasserstein_before.astype(float)).all()


def test_the_guard_flags_the_shifted_output(group_run):
    _, table, _ = group_run
    row = _row(table, SHIFTED)
    assert float(row.structure_preservation) < metrics.STRUCTURE_THRESHOLD
    assert metrics.FLAG_STRUCTURE in row["flags"].split(";")


def test_the_guard_flags_the_erased_structure(group_run):
    _, table, _ = group_run
    assert metrics.FLAG_STRUCTURE_LOCAL in _row(table, ERASED)["flags"].split(";")


def test_undamaged_outputs_are_not_flagged(group_run):
    _, table, _ = group_run
    clean = table[~table.participant_id.isin([f"sub-{SHIFTED}", f"sub-{ERASED}", f"sub-{UNFINISHED}"])]
    assert len(clean) == 8
    assert (clean["flags"] == "n/a").all(), clean[["participant_id", "flags"]].to_string()
    assert (clean.structure_preservation.astype(float) > metrics.STRUCTURE_THRESHOLD).all()
    assert (clean.mask_dice.astype(float) > metrics.MASK_DICE_THRESHOLD).all()


def test_the_unfinished_image_gets_a_warning_row_without_numbers(group_run):
    _, table, _ = group_run
    row = _row(table, UNFINISHED)
    assert row["flags"] == "missing-harmonized"
    assert row.image.endswith("_desc-preproc_T1w.nii.gz")
    assert row.wasserstein_after == row.structure_preservation == row.mask_dice == "n/a"


def test_group_table_sidecar_describes_every_column(group_run):
    output_dir, _, _ = group_run
    described = json.loads((output_dir / group.GROUP_JSON).read_text())
    assert list(described) == list(group.COLUMNS)
    assert all(entry["Description"] for entry in described.values())


def test_group_report_refers_only_to_files_that_exist(group_run):
    output_dir, _, html = group_run
    assert html == output_dir / "group_report.html"
    referenced = local_files(html)
    assert output_dir / "group_T1w.tsv" in referenced
    assert all(path.is_file() for path in referenced), [p for p in referenced if not p.is_file()]
    assert external(html) == []


def test_group_report_shows_every_analysis_and_the_flagged_images(group_run):
    _, _, html = group_run
    text = html.read_text()
    for alt in ("intensity distributions per site", "site-by-site Wasserstein distances",
                "site classifier accuracy before and after", "2D embedding coloured by site",
                "age prediction before and after", "mosaic per site"):
        assert f'alt="{alt}"' in text
    for label in (SHIFTED, ERASED, UNFINISHED):
        assert f"{label}_space-MNI152NLin6Asym" in text
    assert ".tmp-0123456789ab" in text  # leftover of an interrupted write is named, not read


def test_group_level_leaves_no_temporary_files(group_run):
    output_dir, _, _ = group_run
    assert not list(output_dir.glob(".tmp-*"))


def test_parallel_reading_gives_the_same_table(fixture_dirs, tmp_path, group_run):
    output_dir = shutil.copytree(fixture_dirs[0], tmp_path / "out")
    tsv, _ = group.run_group(output_dir, fixture_dirs[1], n_jobs=2)
    assert tsv.read_text() == (group_run[0] / group.GROUP_TSV).read_text()


def test_empty_output_dir_is_a_no_data_error_naming_it(tmp_path):
    with pytest.raises(NoDataError, match="run the participant level") as caught:
        group.run_group(tmp_path)
    assert str(tmp_path) in caught.value.message and caught.value.exit_code == 18
    assert "\n" not in caught.value.message


def test_output_dir_with_only_unfinished_participants_is_a_no_data_error(output_copy):
    for harmonized in output_copy.glob("sub-*/**/*_desc-harmonized_T1w.*"):
        harmonized.unlink()
    with pytest.raises(NoDataError):
        group.run_group(output_copy)


def test_a_sidecar_without_qc_is_measured_from_the_images(output_copy):
    sidecar_path = next(output_copy.glob(f"sub-{SHIFTED}/anat/*_desc-harmonized_T1w.json"))
    sidecar = json.loads(sidecar_path.read_text())
    del sidecar["QC"]
    sidecar_path.write_text(json.dumps(sidecar))
    tsv, _ = group.run_group(output_copy)
    row = _row(pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False), SHIFTED)
    assert {"missing-qc", metrics.FLAG_STRUCTURE} <= set(row["flags"].split(";"))
    assert float(row.structure_preservation) < metrics.STRUCTURE_THRESHOLD
    assert row.wasserstein_after == "n/a"  # no target style without the sidecar


def test_a_corrupt_image_is_flagged_not_fatal(output_copy):
    next(output_copy.glob("sub-01/anat/*_desc-harmonized_T1w.nii.gz")).write_bytes(b"not a nifti")
    tsv, _ = group.run_group(output_copy)
    row = _row(pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False), "01")
    assert "unreadable" in row["flags"].split(";")


def test_site_classifier_reports_accuracy_and_majority_chance():
    rng = np.random.default_rng(0)
    sites = ["a"] * 12 + ["b"] * 8
    separable = rng.normal(size=(20, 30)) + np.array([[3.0] * 30 if s == "a" else [-3.0] * 30 for s in sites])
    result = group.site_classifier(separable, sites)
    assert result["mean"] == 1.0 and result["chance"] == pytest.approx(0.6) and result["folds"] == 5
    noise = group.site_classifier(rng.normal(size=(20, 30)), sites)
    assert noise["mean"] < 0.9


def test_site_classifier_after_harmonization_is_scaled_on_the_images_before():
    """Histograms calibrated onto one target differ by rounding: fitted to them, the scaler makes a
    per-site offset of 1e-6 separable; on the unharmonized images' spread it is not."""
    rng = np.random.default_rng(0)
    sites = ["a", "b"] * 10
    side = np.array([1.0 if s == "a" else -1.0 for s in sites])[:, None]
    before = rng.normal(size=(20, 30)) + 3.0 * side
    after = np.tile(rng.random(30), (20, 1)) + 1e-6 * (side + rng.normal(scale=0.1, size=(20, 30)))
    assert group.site_classifier(after, sites)["mean"] == 1.0
    scale = metrics.feature_scale(before)
    assert group.site_classifier(after, sites, scale=scale)["mean"] <= 0.7
    assert group.site_classifier(before, sites, scale=scale)["mean"] == 1.0


def test_site_classifier_needs_two_sites_with_two_images():
    X = np.zeros((3, 4))
    assert group.site_classifier(X, ["a", "a", "a"]) is None
    assert group.site_classifier(X, ["a", "a", "b"]) is None


def test_age_association_finds_a_real_age_signal_before_and_after():
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 40)
    signal = np.outer(age, rng.normal(size=50))
    before = signal + rng.normal(scale=20, size=signal.shape) + np.repeat([[0.0], [40.0]], 20, axis=0)
    after = signal + rng.normal(scale=20, size=signal.shape)
    result = group.age_association(before, after, age)
    assert result["after"]["r"] > 0.8 and result["map_agreement"] > 0.8 and result["n"] == 40


def test_read_ages_takes_the_age_column_in_any_case_and_skips_missing(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tAge\n sub-01\t30\nsub-02\tn/a\n03\t40.5\n".replace(" ", ""))
    assert group.read_ages(tmp_path) == {"sub-01": 30.0, "sub-03": 40.5}
    assert group.read_ages(None) == {} and group.read_ages(tmp_path / "missing") == {}


def test_fixture_ages_reach_the_age_analysis(fixture_dirs):
    ages = group.read_ages(fixture_dirs[1])
    assert ages == {f"sub-{label}": age for label, age in AGES.items()}


# --- failed QC, own anatomy, the verdict, images at the target site, the demo model ----------------------------


def test_group_table_says_pass_fail_or_incomplete_for_every_image(group_run):
    _, table, _ = group_run
    assert _row(table, SHIFTED).qc == _row(table, ERASED).qc == "fail"
    assert _row(table, UNFINISHED).qc == "incomplete"
    others = table[~table.participant_id.isin([f"sub-{x}" for x in (SHIFTED, ERASED, UNFINISHED)])]
    assert (others.qc == "pass").all()
    assert list(table.columns).index("qc") == list(table.columns).index("image") + 1  # next to the image


def test_group_table_marks_the_images_already_at_the_target_site(group_run):
    _, table, _ = group_run
    done = table[table.participant_id != f"sub-{UNFINISHED}"]
    assert ((done.at_target_site == "yes") == (done.site == TARGET)).all()
    assert (done.mean_abs_change.astype(float) > 0).all()


def test_group_report_shows_own_anatomy_and_the_verdict_beside_the_distances(group_written, group_run):
    output_dir, result = group_written
    _, table, html = group_run
    done = table[table.participant_id != f"sub-{UNFINISHED}"]
    assert (done.own_anatomy == "yes").all()  # the fixture's outputs are their own people, even the damaged ones
    text = html.read_text()
    assert text.index('id="distances"') < text.index('id="anatomy"') < text.index('id="classifier"')
    verdict = result.summary["verdict"]
    # the sites came together, but 2 of 10 images changed anatomy: not a success, and the report says so on top
    assert verdict["closer"] is True and verdict["anatomy"] is False and verdict["ok"] is False
    top = text.split('<section id="summary">')[1].split("<table>")[0]
    assert "Verdict: NOT a success yet" in top and "2 of 10 carry a structure flag" in top
    assert "2 images failed QC" in top and "demo model shipped with hcld-bids" in top
    assert "images already at the target site</th><td>3, harmonized anyway" in text


def _people(n=10, blocks=400, seed=0):
    rng = np.random.default_rng(seed)
    common = rng.normal(size=blocks)  # what every registered brain shares
    return np.array([common + 0.6 * rng.normal(size=blocks) for _ in range(n)])


def test_identification_keeps_honest_harmonization_and_catches_collapsed_outputs():
    before = _people()
    honest = np.tanh(0.5 * before) * 0.8 + 0.3 + 0.02 * np.random.default_rng(1).normal(size=before.shape)
    participants = [f"sub-{i}" for i in range(len(before))]
    kept = group.anatomy_identification(before, honest, participants)
    assert kept["rate"] == 1.0 and kept["rank"] == [1] * 10 and kept["chance"] == pytest.approx(0.1)
    collapsed = np.repeat(before.mean(axis=0, keepdims=True), len(before), axis=0)  # every output the same brain
    lost = group.anatomy_identification(before, collapsed, participants)
    assert lost["rate"] <= 0.2
    target = np.repeat(before[:1], len(before), axis=0)  # every output the target's anatomy
    assert group.anatomy_identification(before, target, participants)["rate"] == pytest.approx(0.1)


def test_identification_counts_another_session_of_the_same_person_as_own():
    before = _people(6)
    before[1] = before[0] + 0.05  # sub-a scanned twice
    participants = ["sub-a", "sub-a", "sub-b", "sub-c", "sub-d", "sub-e"]
    after = before.copy()
    after[1] = before[0]  # most like the other session: still the same person
    assert group.anatomy_identification(before, after, participants)["own"] == [True] * 6


def test_verdict_of_collapsed_outputs_is_not_a_success_even_when_the_sites_came_together():
    before, after = np.array([[0, 0.16], [0.16, 0]]), np.array([[0, 0.087], [0.087, 0]])
    collapsed = {"rate": 0.1, "chance": 0.1, "own": [], "rank": [], "n": 10}
    verdict = group.group_verdict(before, after, collapsed, structure_flagged=0, n_images=10)
    assert verdict["ok"] is False and verdict["closer"] is True
    assert verdict["text"].startswith("NOT a success: the sites came closer, but only 10% of the harmonized images")
    good = group.group_verdict(before, after, {**collapsed, "rate": 1.0}, structure_flagged=0, n_images=10)
    assert good["ok"] is True and good["text"].startswith("the sites came together without changing anatomy")
    same = group.group_verdict(before, before, {**collapsed, "rate": 1.0}, structure_flagged=0, n_images=10)
    assert same["ok"] is False and same["text"].startswith("anatomy kept, but the sites did not come together")
    single = group.group_verdict(np.zeros((1, 1)), np.zeros((1, 1)), None, 0, 2)
    assert single["ok"] is None and single["text"].startswith("cannot tell")


def test_group_level_summary_names_failed_images_and_the_verdict(group_written, caplog):
    import logging
    from types import SimpleNamespace

    from hcld_bids.levels.group import summarize_group

    _, result = group_written
    with caplog.at_level(logging.INFO, logger="hcld_bids"):
        summarize_group(SimpleNamespace(), result)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info[0].startswith("group level finished: 10 harmonized image(s) of 10 participant(s) from 3 site(s)")
    assert any(w.startswith(f"QC FAILED for sub-{SHIFTED}/anat/") for w in warnings)
    assert any(w.startswith(f"QC FAILED for sub-{ERASED}/anat/") for w in warnings)
    assert any(w.startswith("verdict: NOT a success yet") for w in warnings)
    assert any(w.startswith(f"1 image(s) incomplete (skipped): sub-{UNFINISHED}/") for w in warnings)
    assert any("demo model" in w for w in warnings)
    assert any(line.startswith("  report: ") for line in info)
    assert any(line.startswith("  already at the target site: 3 image(s), harmonized anyway") for line in info)
