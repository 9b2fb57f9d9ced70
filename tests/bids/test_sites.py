"""Site of every T1w: participants.tsv, then sessions.tsv, then the scanner in the sidecar."""

import pytest

from hcld_bids.bids.layout import collect_t1w, open_layout
from hcld_bids.bids.sites import check_target_site, resolve_sites, sanitize_label, scanner_site_label
from hcld_bids.errors import BadDataError, UsageError
from hcld_bids.testing import make_bids_dataset

PHILIPS = "PhilipsIngeniaElitionX3T45053"
SIEMENS = "SiemensMAGNETOMPrismaFit3T67093"
UIH = "UIHuMR7703T120015"


def _sites(root, **kwargs):
    records = resolve_sites(collect_t1w(open_layout(root)), root, **kwargs)
    return [(r.relpath, r.site, r.site_source) for r in records]


def _records(root, **kwargs):
    return [(r, r.site, r.site_value) for r in resolve_sites(collect_t1w(open_layout(root)), root, **kwargs)]


def test_sites_from_participants_tsv(bids_participants):
    assert _sites(bids_participants) == [
        ("sub-01/anat/sub-01_T1w.nii.gz", "philips", "participants.tsv"),
        ("sub-02/anat/sub-02_T1w.nii.gz", "siemens", "participants.tsv"),
        ("sub-03/anat/sub-03_T1w.nii.gz", "uih", "participants.tsv"),
    ]


def test_sites_from_sessions_tsv_follow_a_travelling_subject(bids_sessions):
    sites = {(rel.split("/")[0], rel.split("/")[1], site, source) for rel, site, source in _sites(bids_sessions)}
    assert sites == {
        ("sub-01", "ses-a", "philips", "sessions.tsv"),
        ("sub-01", "ses-b", "siemens", "sessions.tsv"),
        ("sub-02", "ses-a", "uih", "sessions.tsv"),
        ("sub-02", "ses-b", "uih", "sessions.tsv"),
    }


def test_sites_from_inherited_scanner_fields(bids_scanner):
    assert [(site, source) for _, site, source in _sites(bids_scanner)] == [
        (PHILIPS, "scanner"),
        (SIEMENS, "scanner"),
        (UIH, "scanner"),
    ]


def test_two_reconstructions_of_one_scanner_are_one_site(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, site_source="scanner", subjects={"01": "siemens"}, runs=2)
    assert [site for _, site, _ in _sites(root)] == [SIEMENS, SIEMENS]


def test_empty_site_cell_falls_through_to_the_scanner(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, missing_site=["02"])
    assert [(site, source) for _, site, source in _sites(root)] == [
        ("philips", "participants.tsv"),
        (SIEMENS, "scanner"),
        ("uih", "participants.tsv"),
    ]


def test_empty_participants_cell_falls_through_to_sessions_tsv(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, site_source="sessions", sessions=["1"],
                             subjects={"01": "uih"})
    (root / "participants.tsv").write_text("participant_id\tsite\nsub-01\tn/a\n")
    assert [(site, source) for _, site, source in _sites(root)] == [("uih", "sessions.tsv")]


def test_no_site_anywhere_is_bad_data_naming_what_was_searched(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, missing_site=["01"], strip_scanner_fields=True)
    with pytest.raises(BadDataError) as info:
        _sites(root)
    message = info.value.message
    assert info.value.exit_code == 65
    assert "sub-01/anat/sub-01_T1w.nii.gz" in message and "sub-02" not in message
    assert "participants.tsv" in message and "sessions.tsv" in message
    assert "Manufacturer" in message and "DeviceSerialNumber" in message


def test_site_column_option_reads_another_column(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, site_column="center")
    assert [site for _, site, _ in _sites(root, site_column="center")] == ["philips", "siemens", "uih"]
    # The default column is absent: sites come from the scanners.
    assert [site for _, site, _ in _sites(root)] == [PHILIPS, SIEMENS, UIH]


def test_named_site_column_that_exists_nowhere_is_a_usage_error(bids_participants):
    with pytest.raises(UsageError, match="'scanner_site' is not a column of .*participants.tsv"):
        _sites(bids_participants, site_column="scanner_site")


def test_table_values_become_alphanumeric_labels(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, site_labels={"uih": "Site U-1", "philips": "P_2"})
    assert [site for _, site, _ in _sites(root)] == ["P2", "siemens", "SiteU1"]


def test_values_that_collide_after_sanitizing_are_bad_data(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, site_labels={"uih": "A-1", "philips": "A1"})
    with pytest.raises(BadDataError, match="'A-1', 'A1' all become the label 'A1'"):
        _sites(root)


@pytest.mark.parametrize(
    ("metadata", "label"),
    [
        ({"Manufacturer": "GE", "ManufacturersModelName": "DISCOVERY MR750", "MagneticFieldStrength": 3,
          "DeviceSerialNumber": "0000006"}, "GEDISCOVERYMR7503T0000006"),
        ({"Manufacturer": "Siemens", "ManufacturersModelName": "Avanto", "MagneticFieldStrength": 1.5,
          "InstitutionName": "Hospital X"}, "SiemensAvanto1p5THospitalX"),
        ({"Manufacturer": "Philips", "MagneticFieldStrength": "3T"}, "Philips3T"),
        ({"RepetitionTime": 2.0}, None),
    ],
)
def test_scanner_label_from_fields(metadata, label):
    assert scanner_site_label(metadata) == label


def test_sanitize_keeps_ascii_letters_and_digits_and_transliterates_accents():
    assert sanitize_label("Site é-3 (new)") == "Sitee3new"
    assert sanitize_label("Hôpital-Sud") == "HopitalSud"
    assert sanitize_label("Tromsø Universitetssykehus") == "TromsoUniversitetssykehus"
    assert sanitize_label("Großhadern Ærø") == "GrosshadernAEro"


def test_accented_site_names_become_transliterated_labels(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, site_labels={"uih": "Hôpital-Sud"})
    assert [site for _, site, _ in _sites(root)] == ["philips", "siemens", "HopitalSud"]
    assert check_target_site("Hôpital-Sud", ["HopitalSud"]) == "HopitalSud"


def test_two_names_of_one_label_are_an_error_naming_both(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir,
                             site_labels={"uih": "Hôpital Sud", "philips": "Hopital-Sud"})
    with pytest.raises(BadDataError, match="'Hopital-Sud', 'Hôpital Sud' all become the label 'HopitalSud'"):
        _sites(root)


def test_target_site_accepts_table_spelling_or_label():
    assert check_target_site("Site A-1", ["SiteA1", "uih"]) == "SiteA1"
    assert check_target_site("uih", ["SiteA1", "uih"]) == "uih"


def test_unknown_target_site_lists_known_sites():
    with pytest.raises(UsageError) as info:
        check_target_site("siemen", ["philips", "siemens", "uih"], add_hint=False)
    assert info.value.exit_code == 64
    assert info.value.message == (
        "unknown --target-site 'siemen' (did you mean siemens?); known sites: philips, siemens, uih"
    )


def test_unknown_target_site_says_how_to_add_it_from_its_own_images(tmp_path, scans_dir):
    root = make_bids_dataset(tmp_path / "ds", scans_dir=scans_dir, site_labels={"uih": "Oslo"})
    records = [record for record, _, _ in _records(root)]
    with pytest.raises(UsageError) as info:
        check_target_site("Oslo", ["siteA", "siteB"], records=records)
    message = info.value.message
    assert message.startswith("unknown --target-site 'Oslo'; known sites: siteA, siteB; to add site Oslo from its "
                              "own images, run `hcld-bids BIDS_DIR OUTPUT_DIR train --add-site-prototypes "
                              "--participant-label 03`")
    assert "\n" not in message
    with pytest.raises(UsageError, match="--participant-label <participants whose site is Bergen>"):
        check_target_site("Bergen", ["siteA"], records=records)


def test_did_you_mean_ignores_case_first():
    with pytest.raises(UsageError, match=r"did you mean SiteA\?"):
        check_target_site("sitea", ["SiteA", "SiteB"], add_hint=False)
