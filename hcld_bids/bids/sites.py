"""The acquisition site of every T1w image.

First found wins, per image:

1. the site column (``site``, or ``--site-column``) of ``participants.tsv``, row of the subject;
2. the same column of ``sub-<label>/sub-<label>_sessions.tsv``, row of the session;
3. the scanner, from the image's sidecar metadata (BIDS inheritance applied): Manufacturer,
   ManufacturersModelName, MagneticFieldStrength, and DeviceSerialNumber (or InstitutionName when the
   serial number is missing).

An empty cell (``n/a`` or blank) falls through to the next source. Site labels are ASCII letters and digits
only, so that they work as ``--target-site`` values and as BIDS labels: table values keep their letters and
digits, accented letters transliterated (``"Site A-1"`` -> ``"SiteA1"``, ``"Hôpital-Sud"`` ->
``"HopitalSud"``); a scanner gives e.g. ``"SiemensMAGNETOMPrismaFit3T67093"`` (manufacturer, model, field
strength in tesla with ``p`` for a decimal point, serial number). Two different names that give one label
(``"Site A"`` and ``"SiteA"``) are an error naming both, never one site.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..config import DEFAULT_SITE_COLUMN
from ..errors import BadDataError, UsageError
from .layout import T1wRecord

LOGGER = logging.getLogger("hcld_bids.bids")

#: Sidecar fields that identify a scanner, in the order they build a label.
SCANNER_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "DeviceSerialNumber",
    "InstitutionName",
)
SOURCE_PARTICIPANTS = "participants.tsv"
SOURCE_SESSIONS = "sessions.tsv"
SOURCE_SCANNER = "scanner"

_MISSING = {"", "n/a"}
_IMAGES_IN_MESSAGE = 5


#: Letters that Unicode does not decompose into an ASCII letter and accents.
_TRANSLITERATION = str.maketrans({"ß": "ss", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe",
                                  "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Þ": "Th", "þ": "th", "ı": "i"})


def sanitize_label(text) -> str:
    """Keep the ASCII letters and digits of ``text``, accented letters transliterated (``"Site A-1"`` ->
    ``"SiteA1"``, ``"Hôpital-Sud"`` -> ``"HopitalSud"``, ``"Tromsø"`` -> ``"Tromso"``)."""
    decomposed = unicodedata.normalize("NFKD", str(text).translate(_TRANSLITERATION))
    return re.sub(r"[^A-Za-z0-9]", "", "".join(c for c in decomposed if not unicodedata.combining(c)))


def _field_strength(value) -> str:
    """3 -> "3T", 1.5 -> "1p5T", "3T" -> "3T"; unparsable values are sanitized as they are."""
    try:
        tesla = float(str(value).upper().rstrip("T").strip())
    except ValueError:
        return sanitize_label(value)
    return f"{tesla:g}".replace(".", "p") + "T"


def scanner_site_label(metadata: Mapping) -> str | None:
    """A site label from scanner fields of sidecar metadata, or ``None`` when there are none.

    Manufacturer + model + field strength + DeviceSerialNumber; InstitutionName stands in for a missing
    serial number (so two identical scanner models at two institutions stay apart).
    """
    parts = []
    for name in ("Manufacturer", "ManufacturersModelName"):
        if metadata.get(name) not in (None, ""):
            parts.append(sanitize_label(metadata[name]))
    if metadata.get("MagneticFieldStrength") not in (None, ""):
        parts.append(_field_strength(metadata["MagneticFieldStrength"]))
    if metadata.get("DeviceSerialNumber") not in (None, ""):
        parts.append(sanitize_label(metadata["DeviceSerialNumber"]))
    elif metadata.get("InstitutionName") not in (None, ""):
        parts.append(sanitize_label(metadata["InstitutionName"]))
    label = "".join(parts)
    return label or None


def _read_tsv(path: Path) -> list[dict[str, str]] | None:
    """Rows of a BIDS TSV as strings (nothing parsed as numbers or NaN); ``None`` if absent."""
    if not path.is_file():
        return None
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise BadDataError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    return table.to_dict(orient="records")


def _column_values(rows: list[dict[str, str]] | None, key: str, column: str) -> dict[str, str] | None:
    """Map the ``key`` column (e.g. participant_id) to ``column``; ``None`` when ``column`` is absent."""
    if not rows or column not in rows[0]:
        return None
    return {row.get(key, "").strip(): row[column].strip() for row in rows}


def _no_site_message(missing: list[T1wRecord], participants_file: Path, participants_rows, column: str,
                     sessions_cache: dict) -> str:
    """One line: which images have no site, what was looked at for the first of them, and the fix."""
    shown = ", ".join(r.relpath for r in missing[:_IMAGES_IN_MESSAGE])
    if len(missing) > _IMAGES_IN_MESSAGE:
        shown += f", ... ({len(missing)} in all)"
    first = missing[0]
    subjects = sorted({f"sub-{r.subject}" for r in missing})
    looked: list[str] = []
    if participants_rows is None:
        looked.append(f"{participants_file} does not exist")
        fix = f"add participants.tsv with a {column!r} column"
    elif not participants_rows:
        looked.append(f"{participants_file} has no rows")
        fix = f"list the participants in participants.tsv with a {column!r} column"
    elif column not in participants_rows[0]:
        columns = ", ".join(participants_rows[0])
        looked.append(f"{participants_file} has no {column!r} column (its columns: {columns})")
        fix = (f"add a {column!r} column to participants.tsv, or name the column that holds the site with "
               "--site-column")
    else:
        ids = {str(row.get("participant_id", "")).strip() for row in participants_rows}
        absent = [s for s in subjects if s not in ids]
        if absent:
            looked.append(f"{', '.join(absent[:_IMAGES_IN_MESSAGE])} not listed in {participants_file}")
        empty = [s for s in subjects if s in ids]
        if empty:
            looked.append(f"the {column!r} cell of {', '.join(empty[:_IMAGES_IN_MESSAGE])} in {participants_file} "
                          "is empty or n/a")
        fix = f"fill in the {column!r} column of participants.tsv for {', '.join(subjects[:_IMAGES_IN_MESSAGE])}"
    if all(r.session is None for r in missing):
        looked.append("no sessions.tsv applies (no sessions)")
    else:
        if all(sessions_cache.get(r.subject) is None for r in missing if r.session is not None):
            looked.append(f"no sessions.tsv has a {column!r} column")
        else:
            looked.append(f"the {column!r} cells of their sessions.tsv rows are empty")
    if not first.metadata:
        looked.append(f"{first.relpath} has no JSON sidecar")
    else:
        looked.append(f"the sidecar of {first.relpath} has none of the scanner fields {', '.join(SCANNER_FIELDS)}")
    return f"no site found for {shown}: {'; '.join(looked)}; {fix} (or add the scanner fields to the sidecars)"


def resolve_sites(
    records: Iterable[T1wRecord],
    bids_dir: str | os.PathLike,
    *,
    site_column: str | None = None,
) -> list[T1wRecord]:
    """Return ``records`` with ``site`` and ``site_source`` filled (see the module docstring).

    ``site_column=None`` means the default column ``site``, which may be absent; an explicitly named
    column that no participants.tsv or sessions.tsv has is a usage error (64). An image with no site
    from any source, or two table values that become the same label, are bad data (65).
    """
    bids_dir = Path(bids_dir)
    records = list(records)
    column = site_column or DEFAULT_SITE_COLUMN

    participants_file = bids_dir / "participants.tsv"
    participants_rows = _read_tsv(participants_file)
    participants = _column_values(participants_rows, "participant_id", column)
    sessions_cache: dict[str, dict[str, str] | None] = {}

    def sessions_of(subject: str) -> dict[str, str] | None:
        if subject not in sessions_cache:
            path = bids_dir / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
            sessions_cache[subject] = _column_values(_read_tsv(path), "session_id", column)
        return sessions_cache[subject]

    raw_values: dict[str, set[str]] = {}
    resolved: list[T1wRecord] = []
    missing: list[T1wRecord] = []
    fell_back: list[T1wRecord] = []
    for record in records:
        site = source = raw = None
        if participants is not None:
            value = participants.get(f"sub-{record.subject}", "")
            if value not in _MISSING and sanitize_label(value):
                site, source, raw = sanitize_label(value), SOURCE_PARTICIPANTS, value
                raw_values.setdefault(site, set()).add(value)
        if site is None and record.session is not None:
            sessions = sessions_of(record.subject)
            if sessions is not None:
                value = sessions.get(f"ses-{record.session}", "")
                if value not in _MISSING and sanitize_label(value):
                    site, source, raw = sanitize_label(value), SOURCE_SESSIONS, value
                    raw_values.setdefault(site, set()).add(value)
        if site is None:
            site = raw = scanner_site_label(record.metadata)
            source = SOURCE_SCANNER if site else None
            if site is not None and participants is not None:
                fell_back.append(record)
        if site is None:
            missing.append(record)
        resolved.append(dataclasses.replace(record, site=site, site_source=source, site_value=raw))

    if site_column is not None and participants is None and all(
        sessions_cache.get(r.subject) is None for r in records if r.session is not None
    ):
        columns = sorted(participants_rows[0]) if participants_rows else []
        close = _did_you_mean(site_column, [c for c in columns if c != "participant_id"])
        hint = f" (did you mean {close}?)" if close else ""
        raise UsageError(
            f"--site-column {site_column!r} is not a column of {participants_file} or of any sessions.tsv{hint}"
        )
    clashes = {label: values for label, values in raw_values.items() if len(values) > 1}
    if clashes:
        label, values = sorted(clashes.items())[0]
        raise BadDataError(
            f"site values {', '.join(sorted(map(repr, values)))} all become the label {label!r} "
            "(labels keep letters and digits only); make them differ in letters or digits"
        )
    if missing:
        raise BadDataError(_no_site_message(missing, participants_file, participants_rows, column, sessions_cache))
    if fell_back:
        shown = ", ".join(f"sub-{r.subject}" for r in fell_back[:_IMAGES_IN_MESSAGE])
        if len(fell_back) > _IMAGES_IN_MESSAGE:
            shown += f", ... ({len(fell_back)} in all)"
        LOGGER.warning(
            "%s: no value in the %r column of %s; their site is the scanner of their sidecar instead (e.g. %s): "
            "fill in the column if they belong to one of its sites",
            shown, column, participants_file,
            next(r.site for r in resolved if r.path == fell_back[0].path),
        )
    for record in resolved:
        LOGGER.debug("site of %s: %s (from %s)", record.relpath, record.site, record.site_source)
    return resolved


def _did_you_mean(name: str, known: list[str]) -> str | None:
    """The known label closest to ``name`` (case ignored first), or None."""
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def check_target_site(name: str, known: Iterable[str], *, records: Iterable[T1wRecord] | None = None,
                      add_hint: bool = True) -> str:
    """Return the known site label that ``name`` designates; :class:`UsageError` (64) if none.

    ``name`` may be given as in the site table (``"Site A-1"``) or as the label (``"SiteA1"``). The error
    says which known site is closest, lists them all and (``add_hint``, the participant level) how to add
    the site from its own images (``train --add-site-prototypes``), naming its participants among
    ``records`` when there are any.
    """
    known = sorted(set(known))
    label = sanitize_label(name)
    if label in known:
        return label
    close = _did_you_mean(label or str(name), known)
    hint = f" (did you mean {close}?)" if close else ""
    message = f"unknown --target-site {name!r}{hint}; known sites: {', '.join(known) if known else 'none'}"
    if add_hint:
        own = sorted({r.subject for r in records or [] if r.site == label})
        if own:
            shown = " ".join(own[:10]) + (" ..." if len(own) > 10 else "")
            how = f"--participant-label {shown}"
        else:
            how = f"--participant-label <participants whose site is {label}>"
        message += (f"; to add site {label} from its own images, run `hcld-bids BIDS_DIR OUTPUT_DIR train "
                    f"--add-site-prototypes {how}` (with the same --model, if any), then this command again "
                    "(without --model it then uses OUTPUT_DIR/models/hcld, where that run writes the model)")
    raise UsageError(message)
