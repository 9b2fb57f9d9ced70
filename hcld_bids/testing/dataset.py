"""Build small multi-site BIDS datasets from a few real T1w scans.

The scans (3 mm, int16, with the sidecars dcm2niix wrote) ship with the package in ``hcld_bids/data/t1w``
(the demo uses them too); three scanners are represented (see :data:`SCANNERS`). A dataset is described by which scanner each
subject (or each session of a subject) was scanned on, and by where the site label is recorded:

``"participants"``
    a column of ``participants.tsv``;
``"sessions"``
    a column of each ``sub-<label>_sessions.tsv``;
``"scanner"``
    nowhere but the scanner fields of the image sidecars (Manufacturer, ManufacturersModelName, ...).

The datasets pass ``bids-validator-deno`` without errors. A scan may be reused for several subjects.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from ..errors import MissingInputError

#: Scanner key -> file stems of its scans in the scans directory (runs cycle through them).
SCANNERS: dict[str, tuple[str, ...]] = {
    "philips": ("philips_elitionx3T_adni_mprage",),
    "siemens": ("siemens_prismafit3T_xa30_s5_nonorm", "siemens_prismafit3T_xa30_s6_norm"),
    "uih": ("uih_umr770_3T_run1_2mm", "uih_umr770_3T_run2_2mm"),
}

#: Sidecar fields that identify a scanner; ``strip_scanner_fields`` removes them.
_SCANNER_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "InstitutionName",
    "DeviceSerialNumber",
    "StationName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
)

SITE_SOURCES = ("participants", "sessions", "scanner")

_DEFAULT_SUBJECTS = {"01": "philips", "02": "siemens", "03": "uih"}


def find_scans_dir(scans_dir: str | os.PathLike | None = None) -> Path:
    """Return the directory holding the vendored scans.

    Looks at ``scans_dir``, then the ``HCLD_TEST_SCANS`` environment variable, then the package's ``data/t1w``
    of the source tree this package was imported from.
    """
    candidates: list[Path] = []
    if scans_dir is not None:
        candidates.append(Path(scans_dir))
    elif os.environ.get("HCLD_TEST_SCANS"):
        candidates.append(Path(os.environ["HCLD_TEST_SCANS"]))
    else:
        candidates.append(Path(__file__).resolve().parents[1] / "data" / "t1w")
    for candidate in candidates:
        if all((candidate / f"{stem}.nii.gz").is_file() for stems in SCANNERS.values() for stem in stems):
            return candidate
    raise MissingInputError(
        f"test scans not found in {', '.join(map(str, candidates))}; pass scans_dir= or set "
        "HCLD_TEST_SCANS to a directory holding the hcld_bids/data/t1w files of the hcld-bids package"
    )


def _normalise_subjects(
    subjects: Mapping[str, str | Mapping[str, str]] | None, sessions: Sequence[str] | None
) -> dict[str, dict[str | None, str]]:
    """subject -> {session or None -> scanner key}."""
    subjects = dict(_DEFAULT_SUBJECTS if subjects is None else subjects)
    plan: dict[str, dict[str | None, str]] = {}
    for subject, where in subjects.items():
        if isinstance(where, Mapping):
            per_session = dict(where)
        elif sessions:
            per_session = {session: where for session in sessions}
        else:
            per_session = {None: where}
        for scanner in per_session.values():
            if scanner not in SCANNERS:
                raise ValueError(f"unknown scanner {scanner!r} for sub-{subject}; use one of {sorted(SCANNERS)}")
        plan[str(subject)] = per_session
    if len({None in per_session for per_session in plan.values()}) > 1:
        raise ValueError("either every subject has sessions or none has")
    return plan


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def _write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def make_bids_dataset(
    root: str | os.PathLike,
    *,
    site_source: str = "participants",
    subjects: Mapping[str, str | Mapping[str, str]] | None = None,
    sessions: Sequence[str] | None = None,
    runs: int = 1,
    scans_dir: str | os.PathLike | None = None,
    with_sidecars: bool = True,
    strip_scanner_fields: bool = False,
    sidecar_level: str = "file",
    site_column: str = "site",
    site_labels: Mapping[str, str] | None = None,
    missing_site: Sequence[str] = (),
) -> Path:
    """Write a BIDS dataset at ``root`` (created; must not exist or be empty) and return its path.

    Parameters
    ----------
    site_source
        ``"participants"``, ``"sessions"`` or ``"scanner"``: where the site label is recorded.
    subjects
        subject label -> scanner key of :data:`SCANNERS`, or -> {session label -> scanner key} for a
        subject scanned at several sites. Default: ``{"01": "philips", "02": "siemens", "03": "uih"}``.
    sessions
        session labels given to every subject whose value in ``subjects`` is a scanner key.
    runs
        T1w runs per subject/session; with more than one, files get a ``run-<n>`` entity and the runs
        cycle through the scans of that scanner (so Siemens runs differ, Philips repeats its scan).
    with_sidecars
        write the dcm2niix JSON sidecars next to the images (or at ``sidecar_level``).
    strip_scanner_fields
        remove Manufacturer, model, field strength, institution and serial fields from sidecars.
    sidecar_level
        ``"file"`` (one sidecar per image) or ``"subject"`` (``sub-<l>/sub-<l>_T1w.json``, inherited by
        every T1w of the subject; needs one scanner per subject).
    site_column
        name of the site column written into participants.tsv or sessions.tsv.
    site_labels
        scanner key -> label written in the site column (default: the scanner key itself).
    missing_site
        subject labels whose site cell is written as ``n/a``.
    """
    if site_source not in SITE_SOURCES:
        raise ValueError(f"site_source must be one of {SITE_SOURCES}, not {site_source!r}")
    if sidecar_level not in ("file", "subject"):
        raise ValueError(f"sidecar_level must be 'file' or 'subject', not {sidecar_level!r}")
    if runs < 1:
        raise ValueError("runs must be >= 1")
    plan = _normalise_subjects(subjects, sessions)
    has_sessions = None not in next(iter(plan.values()))
    if site_source == "sessions" and not has_sessions:
        raise ValueError("site_source='sessions' needs sessions")
    if site_source == "participants":
        for subject, per_session in plan.items():
            if len(set(per_session.values())) > 1:
                raise ValueError(f"sub-{subject} has several scanners; participants.tsv can hold one site")
    if sidecar_level == "subject":
        for subject, per_session in plan.items():
            if len(set(per_session.values())) > 1:
                raise ValueError(f"sub-{subject} has several scanners; use sidecar_level='file'")
    labels = {key: key for key in SCANNERS}
    labels.update(site_labels or {})

    scans = find_scans_dir(scans_dir)
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)

    _write_json(
        root / "dataset_description.json",
        {
            "Name": "hcld-bids test dataset",
            "BIDSVersion": "1.10.0",
            "DatasetType": "raw",
            "License": "BSD-2-Clause",
            "Authors": ["hcld-bids test-data generator"],
            "ReferencesAndLinks": [
                "https://github.com/neurolabusc/dcm_qa_philips_enh",
                "https://github.com/neurolabusc/dcm_qa_xa30",
                "https://github.com/neurolabusc/dcm_qa_uih",
            ],
        },
    )
    (root / "README").write_text(
        "Small multi-site T1w dataset generated by hcld_bids.testing.make_bids_dataset from real scans\n"
        "(3 mm, downsampled) of the dcm_qa repositories; see LICENSE.\n"
    )
    notice = scans / "NOTICE.rst"
    if notice.is_file():
        shutil.copyfile(notice, root / "LICENSE")

    def site_cell(subject: str, scanner: str) -> str:
        return "n/a" if subject in missing_site else labels[scanner]

    participant_columns = {"participant_id": "Participant label."}
    participant_rows = []
    for subject, per_session in plan.items():
        row = [f"sub-{subject}"]
        if site_source == "participants":
            row.append(site_cell(subject, next(iter(per_session.values()))))
        participant_rows.append(row)
    if site_source == "participants":
        participant_columns[site_column] = "Acquisition site (scanner) of the participant."
    _write_tsv(root / "participants.tsv", list(participant_columns), participant_rows)
    if len(participant_columns) > 1:
        _write_json(
            root / "participants.json",
            {name: {"Description": text} for name, text in participant_columns.items() if name != "participant_id"},
        )
    if has_sessions:
        session_columns = {"session_id": "Session label."}
        if site_source == "sessions":
            session_columns[site_column] = "Acquisition site (scanner) of the session."
            _write_json(root / "sessions.json", {site_column: {"Description": session_columns[site_column]}})
        for subject, per_session in plan.items():
            rows = []
            for session, scanner in per_session.items():
                row = [f"ses-{session}"]
                if site_source == "sessions":
                    row.append(site_cell(subject, scanner))
                rows.append(row)
            _write_tsv(root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv", list(session_columns), rows)

    def sidecar(stem: str) -> dict:
        content = json.loads((scans / f"{stem}.json").read_text())
        if strip_scanner_fields:
            for field in _SCANNER_FIELDS:
                content.pop(field, None)
        return content

    for subject, per_session in plan.items():
        if with_sidecars and sidecar_level == "subject":
            scanner = next(iter(per_session.values()))
            _write_json(root / f"sub-{subject}" / f"sub-{subject}_T1w.json", sidecar(SCANNERS[scanner][0]))
        for session, scanner in per_session.items():
            for run in range(1, runs + 1):
                stem = SCANNERS[scanner][(run - 1) % len(SCANNERS[scanner])]
                entities = {"subject": subject, "session": session, "run": run if runs > 1 else None}
                image = root / _raw_path(entities, ".nii.gz")
                image.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(scans / f"{stem}.nii.gz", image)
                if with_sidecars and sidecar_level == "file":
                    _write_json(root / _raw_path(entities, ".json"), sidecar(stem))
    return root


def _raw_path(entities: Mapping, extension: str) -> str:
    """Relative path of a raw anatomical T1w file, built with pybids' BIDS path patterns."""
    from bids.layout.writing import build_path

    full = {key: value for key, value in entities.items() if value is not None}
    full.update(datatype="anat", suffix="T1w", extension=extension)
    return build_path(full, _bids_patterns(), strict=True)


@lru_cache(maxsize=1)
def _bids_patterns() -> list[str]:
    import bids.layout

    config = Path(bids.layout.__file__).parent / "config" / "bids.json"
    return json.loads(config.read_text())["default_path_patterns"]
