"""The OUTPUT_DIR the report tests read: real scans on the template grid, three sites, two damaged
outputs, a half-finished image and leftovers of an interrupted write (see ``build_fixture_outputs``)."""

from __future__ import annotations

from pathlib import Path

from hcld_bids.reports.synthetic import ImageSpec, build_output_dir, write_participants_tsv

SCANS = Path(__file__).resolve().parents[2] / "hcld_bids" / "data" / "t1w"
NORM = SCANS / "siemens_prismafit3T_xa30_s6_norm.nii.gz"
NONORM = SCANS / "siemens_prismafit3T_xa30_s5_nonorm.nii.gz"
UIH1 = SCANS / "uih_umr770_3T_run1_2mm.nii.gz"
UIH2 = SCANS / "uih_umr770_3T_run2_2mm.nii.gz"
TARGET = "siteA"

#: Subject label whose harmonized brain is shifted by 6 mm: the whole-brain guard must flag it.
SHIFTED = "06"
#: Harmonized image with a 16 mm ball of tissue erased: the local guard must flag it.
ERASED = "09"
#: Preprocessed only (the participant run did not finish).
UNFINISHED = "10"

SPECS = [
    ImageSpec("01", NORM, "siteA", seed=1),
    ImageSpec("02", NORM, "siteA", seed=2),
    ImageSpec("03", NORM, "siteA", seed=3),
    ImageSpec("04", NONORM, "siteB", seed=4),
    ImageSpec("05", NONORM, "siteB", seed=5),
    ImageSpec("06", NONORM, "siteB", seed=6, damage="shift"),
    ImageSpec("07", UIH1, "siteC", seed=7),
    ImageSpec("08", UIH1, "siteC", session="1", seed=8),
    ImageSpec("08", UIH2, "siteC", session="2", seed=9),
    ImageSpec("09", UIH2, "siteC", seed=10, damage="erase"),
    ImageSpec("10", NONORM, "siteB", seed=11, harmonized=False),
]
AGES = {"01": 23.5, "02": 41.0, "03": 67.2, "04": 30.1, "05": 55.4, "06": 71.8, "07": 28.9, "08": 49.5,
        "09": 62.3, "10": 35.0}
SITES = {spec.subject: spec.site for spec in SPECS}


def build_fixture_outputs(directory) -> tuple[Path, Path]:
    """Write BIDS_DIR (participants.tsv with site and age) and OUTPUT_DIR under ``directory``."""
    directory = Path(directory)
    bids_dir = write_participants_tsv(directory / "bids", {
        label: {"site": SITES[label], "age": age} for label, age in AGES.items()})
    output_dir = build_output_dir(directory / "out", SPECS, TARGET, bids_dir)
    # leftovers of a killed run: a staging file and a staging directory of atomic writes
    anat = output_dir / "sub-02" / "anat"
    (anat / ".tmp-0123456789ab-sub-02_space-MNI152NLin6Asym_res-2_desc-harmonized_T1w.nii.gz").write_bytes(b"\x1f\x8b")
    (output_dir / "sub-05" / ".tmp-feedfacecafe-figures").mkdir()
    return output_dir, bids_dir
