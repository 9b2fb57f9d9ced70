"""Validate the input dataset with bids-validator-deno (the BIDS validator installed by its PyPI package).

Errors fail the run with exit code 16; warnings are only kept in the report. A pass is remembered in the
work directory for the exact state of the dataset (see :func:`dataset_fingerprint`), so that many
participant jobs sharing one work directory validate once. Without the executable, pybids' own checks
are used instead, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidBIDSError
from .atomic import atomic_write_json, atomic_write_text

LOGGER = logging.getLogger("hcld_bids.bids")

VALIDATOR = "bids-validator-deno"
#: Top-level entries that are not part of the raw data the validator and the index look at.
_SKIPPED_TOP_LEVEL = ("derivatives", "sourcedata")
#: How many errors the one-line message names.
_ERRORS_IN_MESSAGE = 3


def find_validator() -> str | None:
    """Path of the ``bids-validator-deno`` executable: on PATH, or next to the running Python."""
    found = shutil.which(VALIDATOR)
    if found:
        return found
    beside = Path(sys.executable).parent / VALIDATOR
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return None


def dataset_fingerprint(bids_dir: str | os.PathLike, extra: str = "") -> str:
    """sha256 of the dataset's location and of every file's name, size and modification time.

    Hidden entries and the top-level ``derivatives/`` and ``sourcedata/`` are left out. Cheap (no file is
    read), and it changes whenever a file is added, removed or rewritten, so caches keyed by it go stale
    never silently. ``extra`` is mixed in (e.g. indexing options).
    """
    root = Path(bids_dir).absolute()
    digest = hashlib.sha256(f"{root}\0{extra}\n".encode())
    for dirpath, dirnames, filenames in os.walk(root):
        top = Path(dirpath) == root
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (top and d in _SKIPPED_TOP_LEVEL)
        )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except FileNotFoundError:  # a dangling link (e.g. git-annex content not fetched)
                digest.update(f"{path.relative_to(root)}\0missing\n".encode())
                continue
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class ValidationResult:
    """What the validator said: the error issues (code, location) and where the full report is."""

    errors: list[tuple[str, str]]
    report: Path | None


def _issue_location(issue: dict) -> str:
    if issue.get("location"):
        return str(issue["location"])
    affects = issue.get("affects") or []
    return str(affects[0]) if affects else ""


def run_validator(bids_dir: Path, report: Path, executable: str) -> ValidationResult:
    """Run the validator on ``bids_dir``, write its JSON report to ``report``; return its errors.

    Raises ``RuntimeError`` when the validator itself fails (no JSON, unexpected exit status).
    """
    proc = subprocess.run(
        [executable, "--format", "json", "--no-color", str(bids_dir)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    try:
        result = json.loads(proc.stdout)
        issues = result["issues"]["issues"]
    except (json.JSONDecodeError, KeyError, TypeError):
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise RuntimeError(f"{executable} exited with {proc.returncode} without a report: {tail}") from None
    atomic_write_json(report, result)
    errors = [(issue.get("code", "?"), _issue_location(issue)) for issue in issues if issue.get("severity") == "error"]
    if errors and proc.returncode == 0:  # pragma: no cover - validator contract
        LOGGER.warning("%s reported errors but exited with 0", executable)
    return ValidationResult(errors=errors, report=report)


def validate_bids(
    bids_dir: str | os.PathLike,
    *,
    report_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """Validate ``bids_dir``; raise :class:`InvalidBIDSError` (16) on errors.

    Returns how it was validated: ``"bids-validator-deno"``, ``"cached"`` (an earlier pass of the same
    dataset state was found in ``cache_dir``) or ``"pybids"`` (the executable is absent: only
    dataset_description.json is checked here, and the index keeps BIDS-valid file names only).
    """
    bids_dir = Path(bids_dir).absolute()
    report_path = Path(report_path)
    stamp = None
    if cache_dir is not None:
        stamp = Path(cache_dir) / f"bids-validation-{dataset_fingerprint(bids_dir)[:32]}.ok"
        if stamp.is_file():
            LOGGER.info("BIDS_DIR passed validation before in this state (%s)", stamp)
            return "cached"

    executable = find_validator()
    if executable is None:
        LOGGER.warning(
            "%s not found: only pybids' checks are applied to %s (install the bids-validator-deno "
            "package for full validation)",
            VALIDATOR,
            bids_dir,
        )
        _pybids_check(bids_dir)
        return "pybids"

    LOGGER.info("Validating %s with %s", bids_dir, executable)
    try:
        result = run_validator(bids_dir, report_path, executable)
    except (RuntimeError, OSError) as err:
        LOGGER.warning("BIDS validation could not run (%s); falling back to pybids' checks", err)
        _pybids_check(bids_dir)
        return "pybids"
    if result.errors:
        shown = "; ".join(f"{code} {where}".strip() for code, where in result.errors[:_ERRORS_IN_MESSAGE])
        more = len(result.errors) - _ERRORS_IN_MESSAGE
        more_text = f" and {more} more error(s)" if more > 0 else ""
        raise InvalidBIDSError(
            f"BIDS_DIR {bids_dir} is not valid BIDS: {shown}{more_text}; full report: {result.report}; "
            "fix the dataset or rerun with --skip-bids-validation"
        )
    if stamp is not None:
        atomic_write_text(stamp, f"{result.report}\n")
    return VALIDATOR


#: Fields BIDS requires in dataset_description.json (and pybids checks when it validates a root).
REQUIRED_DESCRIPTION_FIELDS = ("Name", "BIDSVersion")


def check_dataset_description(bids_dir: str | os.PathLike, *, strict: bool = True) -> dict | None:
    """Check ``BIDS_DIR/dataset_description.json``; return its content (``None`` when absent and not strict).

    Raises :class:`InvalidBIDSError` (16) naming the file. The file is read on every run because the
    derivatives' own description names the source dataset from it, so one that is there but is not a JSON
    object ends the run even with ``--skip-bids-validation`` (pybids would ignore it silently). ``strict``
    (validation not skipped) also requires the file and its mandatory ``Name`` and ``BIDSVersion``; with
    ``--skip-bids-validation`` their absence is only a warning, as in pybids and fMRIPrep: hand-made datasets
    that lack them are what that flag is for, and hcld-bids does not need them.
    """
    root = Path(bids_dir).absolute()
    path = root / "dataset_description.json"
    fix = ('it needs at least {"Name": "<dataset name>", "BIDSVersion": "1.10.0"} '
           "(https://bids-specification.readthedocs.io/en/stable/modality-agnostic-files.html)")
    if not path.is_file():
        if strict:
            raise InvalidBIDSError(f"BIDS_DIR {root} is not valid BIDS: dataset_description.json is missing; "
                                   f"add it ({fix}) or rerun with --skip-bids-validation")
        LOGGER.warning("%s is missing; going on because of --skip-bids-validation", path)
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f"line {err.lineno} column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else err
        raise InvalidBIDSError(f"{path} is not valid JSON ({where}), so BIDS_DIR is not valid BIDS; fix the file "
                               f"({fix})") from None
    if not isinstance(content, dict):
        raise InvalidBIDSError(f"{path} holds a JSON {type(content).__name__}, not an object, so BIDS_DIR is not "
                               f"valid BIDS; fix the file ({fix})")
    missing = [key for key in REQUIRED_DESCRIPTION_FIELDS if not str(content.get(key) or "").strip()]
    if missing and strict:
        raise InvalidBIDSError(f"BIDS_DIR {root} is not valid BIDS: dataset_description.json lacks the required "
                               f"field(s) {', '.join(missing)}; add them ({fix}) or rerun with --skip-bids-validation")
    if missing:
        LOGGER.warning("%s lacks the required field(s) %s; going on because of --skip-bids-validation", path,
                       ", ".join(missing))
    return content


def _pybids_check(bids_dir: Path) -> None:
    """The checks pybids applies when opening a dataset with validation on."""
    from bids.exceptions import BIDSValidationError
    from bids.layout.validation import validate_root

    try:
        validate_root(bids_dir, True)
    except BIDSValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise InvalidBIDSError(
            f"BIDS_DIR {bids_dir} is not valid BIDS: {first}; fix the dataset or rerun with --skip-bids-validation"
        ) from err
