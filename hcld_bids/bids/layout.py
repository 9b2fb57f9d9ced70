"""Find the T1w images to process with pybids.

The pybids index (SQLite) is built once per dataset state and shared: several participant jobs may start
at once with one work directory. Each builds in a private temporary directory and renames it into place;
when another job got there first, its complete index is used and the private one is dropped. Nobody ever
opens a half-built index or waits on a database lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CannotCreateOutputError, InvalidBIDSError, MissingInputError, NoDataError, UsageError
from .validation import dataset_fingerprint

LOGGER = logging.getLogger("hcld_bids.bids")

#: Data types that never hold a T1w image; not indexing them keeps the index small and quick.
_OTHER_DATATYPES = "beh|dwi|eeg|emg|func|fmap|ieeg|meg|micr|motion|mrs|nirs|perf|pet"
_INDEX_IGNORE = (
    "code",
    "derivatives",
    "models",
    "sourcedata",
    "stimuli",
    re.compile(r"/\."),
    re.compile(rf"^/sub-[^/]+/(ses-[^/]+/)?({_OTHER_DATATYPES})(/|$)"),
)
#: Default query for T1w images; a "t1w" entry of --bids-filter-file updates it.
T1W_QUERY = {"datatype": "anat", "suffix": "T1w", "extension": [".nii", ".nii.gz"]}
#: How many available labels an error message lists.
_LABELS_IN_MESSAGE = 20


@dataclass(frozen=True)
class T1wRecord:
    """One T1w image to process.

    ``entities`` are the BIDS entities of the file name (subject, session, run, acquisition, ...,
    suffix, extension, datatype); ``metadata`` is its sidecar metadata after BIDS inheritance. ``site``,
    ``site_source`` and ``site_value`` are filled by :func:`hcld_bids.bids.sites.resolve_sites`.
    """

    path: Path
    relpath: str
    subject: str
    session: str | None
    run: int | None
    acquisition: str | None
    entities: dict = field(compare=False, hash=False)
    metadata: dict = field(compare=False, hash=False)
    site: str | None = None
    site_source: str | None = None
    #: the site as written in the table it came from (``"Site A-1"`` for the label ``"SiteA1"``)
    site_value: str | None = None

    def sort_key(self) -> tuple:
        """Order by subject, session, acquisition, reconstruction, run (as a number), then path."""
        ents = self.entities
        return (
            self.subject,
            self.session or "",
            self.acquisition or "",
            str(ents.get("ceagent") or ""),
            str(ents.get("reconstruction") or ""),
            int(self.run) if self.run is not None else -1,
            self.relpath,
        )


def load_bids_filters(path: str | os.PathLike | None) -> dict:
    """Read ``--bids-filter-file``: a JSON object of query name -> {entity: value}.

    Only the ``"t1w"`` query is used by hcld-bids; others (e.g. fMRIPrep's ``"bold"``) are ignored with a
    warning. Missing file: 66; not JSON, not an object of objects: 64.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"--bids-filter-file {path} does not exist")
    try:
        filters = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"--bids-filter-file {path} is not valid JSON ({err})") from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(
            f'--bids-filter-file {path} must hold a JSON object like {{"t1w": {{"session": "01"}}}}'
        )
    ignored = sorted(set(filters) - {"t1w"})
    if ignored:
        LOGGER.warning("--bids-filter-file: ignoring queries other than 't1w': %s", ", ".join(ignored))
    return filters


def _query_value(value):
    """JSON filter value -> pybids query value: null = entity absent, "*" = entity present."""
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    if isinstance(value, list):
        return [_query_value(v) for v in value]
    return value


#: pybids' message for a sidecar it cannot parse (it names the file).
_BAD_JSON = re.compile(r"decode JSON from file (?:<\w+ filename='(?P<name>[^']+)'>|(?P<path>.+?)\.?$)")


def _open_indexed(bids_dir: Path, database_dir: Path | None, validate: bool):
    """pybids' layout of ``bids_dir``; a sidecar that is not JSON and a damaged saved index end in one line."""
    import sqlite3

    import sqlalchemy.exc
    from bids import BIDSLayout
    from bids.layout.index import BIDSLayoutIndexer

    try:
        return BIDSLayout(
            str(bids_dir),
            validate=validate,
            database_path=str(database_dir) if database_dir is not None else None,
            indexer=BIDSLayoutIndexer(validate=validate, ignore=list(_INDEX_IGNORE)),
        )
    except OSError as err:
        bad = _BAD_JSON.search(str(err))
        if bad is None:
            raise
        raise InvalidBIDSError(
            f"{bad.group('name') or bad.group('path')} is not valid JSON; fix or remove it (the bids-validator "
            "reports such files)"
        ) from None
    except (sqlite3.DatabaseError, sqlalchemy.exc.DatabaseError) as err:
        cause = getattr(err, "orig", None) or err
        raise UsageError(
            f"--bids-database-dir {database_dir} holds a damaged pybids index ({cause}); remove it or give an "
            "empty directory"
        ) from None


def _has_index(database_dir: Path) -> bool:
    return (database_dir / "layout_index.sqlite").is_file()


def _build_index(bids_dir: Path, database_dir: Path, validate: bool):
    """Index ``bids_dir`` into ``database_dir`` unless a complete index is already there; return the layout
    the index was built with (an in-memory one, equal to the saved file), or None when another process
    finished its index first.

    The index is built in memory and written to disk once: pybids commits (and SQLite syncs) every step
    of an index built in a file, 34 commits and about a second for a one-file dataset.
    """
    try:
        database_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{database_dir.name}.tmp-", dir=database_dir.parent))
    except OSError as err:
        raise CannotCreateOutputError(
            f"cannot create the BIDS index in {database_dir.parent} ({err.strerror or err}); "
            "choose a writable --bids-database-dir or work directory"
        ) from None
    try:
        layout = _open_indexed(bids_dir, None, validate)
        # replace_connection=False: the layout keeps querying its in-memory index, so no connection to the
        # file stays open across the rename
        layout.save(str(tmp), replace_connection=False)
        try:
            # rename() replaces a missing or empty directory and fails on a non-empty one.
            os.rename(tmp, database_dir)
        except OSError:
            if not _has_index(database_dir):
                raise
            LOGGER.info("Another process indexed %s first; using its index", bids_dir)
            return None
        return layout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_layout(
    bids_dir: str | os.PathLike,
    *,
    database_dir: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    validate: bool = False,
):
    """Open a pybids ``BIDSLayout`` of ``bids_dir`` backed by a reusable SQLite index.

    - ``database_dir`` (``--bids-database-dir``): reused when it holds an index of this same dataset,
      otherwise built there. An index of another dataset is a usage error (64).
    - otherwise ``<work_dir>/bids_db/<fingerprint>``: keyed by the dataset's state, so a changed dataset
      gets a fresh index and an unchanged one is indexed once.
    - neither: an in-memory index.

    ``validate=True`` keeps only file names pybids considers BIDS-valid (used when bids-validator-deno is
    not available); it is part of the index key.
    """
    bids_dir = Path(bids_dir).absolute()
    if database_dir is None and work_dir is None:
        return _open_indexed(bids_dir, None, validate)
    if database_dir is None:
        key = dataset_fingerprint(bids_dir, extra=f"validate={validate}")[:16]
        database_dir = Path(work_dir).absolute() / "bids_db" / key
    database_dir = Path(database_dir).absolute()
    if database_dir.exists() and not database_dir.is_dir():
        raise UsageError(f"--bids-database-dir {database_dir} is a file, not a directory; give a directory")
    if not _has_index(database_dir):
        if database_dir.is_dir() and any(database_dir.iterdir()):
            raise UsageError(
                f"--bids-database-dir {database_dir} is not empty and holds no pybids index; "
                "give an empty or new directory"
            )
        LOGGER.info("Indexing %s into %s", bids_dir, database_dir)
        layout = _build_index(bids_dir, database_dir, validate)
        if layout is not None:  # the index just saved, still in memory: the same content, no reopening
            return layout
    layout = _open_indexed(bids_dir, database_dir, validate)
    if Path(layout.root).absolute() != bids_dir:
        raise UsageError(
            f"--bids-database-dir {database_dir} indexes {layout.root}, not {bids_dir}; "
            "give another directory or remove it"
        )
    return layout


def _check_labels(kind: str, wanted: list[str], available: list[str]) -> None:
    unknown = sorted(set(wanted) - set(available))
    if not unknown:
        return
    import difflib

    prefix = "sub-" if kind == "participant" else "ses-"
    shown = ", ".join(prefix + a for a in available[:_LABELS_IN_MESSAGE]) or "none"
    if len(available) > _LABELS_IN_MESSAGE:
        shown += f", ... ({len(available)} in all)"
    hints = [f"{prefix}{close[0]} for {prefix}{u}" for u in unknown
             if (close := difflib.get_close_matches(u, available, n=1, cutoff=0.6))]
    hint = f" (did you mean {'; '.join(hints)}?)" if hints else ""
    raise NoDataError(
        f"{kind} label(s) not found in BIDS_DIR: {', '.join(prefix + u for u in unknown)}{hint}; available: {shown}"
    )


def collect_t1w(
    layout,
    *,
    participant_label: list[str] | None = None,
    session_label: list[str] | None = None,
    bids_filters: dict | None = None,
) -> list[T1wRecord]:
    """Return the T1w images selected by labels and filters, in a deterministic order.

    Labels are given without ``sub-``/``ses-``. An unknown label, or a selection with no T1w image,
    raises :class:`NoDataError` (18).
    """
    participant_label = list(participant_label or [])
    session_label = list(session_label or [])
    if participant_label:
        _check_labels("participant", participant_label, sorted(layout.get_subjects()))
    if session_label:
        _check_labels("session", session_label, sorted(layout.get_sessions()))

    query = dict(T1W_QUERY)
    query.update({key: _query_value(value) for key, value in (bids_filters or {}).get("t1w", {}).items()})
    if participant_label:
        query["subject"] = participant_label
    if session_label:
        query["session"] = session_label

    try:
        files = layout.get(return_type="object", **query)
    except ValueError as err:  # pybids: an entity it does not know
        unknown = sorted(set((bids_filters or {}).get("t1w", {})) - set(layout.get_entities()))
        if not unknown:
            raise
        raise UsageError(
            f"--bids-filter-file: {', '.join(unknown)} is not a BIDS entity of this dataset; use entities such as "
            "session, acquisition, run or reconstruction"
        ) from err
    if not files:
        described = ", ".join(f"{k}={v}" for k, v in sorted(query.items(), key=lambda kv: kv[0]))
        raise NoDataError(f"no T1w image in BIDS_DIR matches the selection ({described})")

    records = []
    for bids_file in files:
        entities = dict(sorted(bids_file.get_entities(metadata=False).items()))
        records.append(
            T1wRecord(
                path=Path(bids_file.path),
                relpath=Path(bids_file.relpath).as_posix(),
                subject=str(entities["subject"]),
                session=str(entities["session"]) if "session" in entities else None,
                run=entities.get("run"),
                acquisition=entities.get("acquisition"),
                entities=entities,
                metadata=dict(layout.get_metadata(bids_file.path)),
            )
        )
    return sorted(records, key=T1wRecord.sort_key)
