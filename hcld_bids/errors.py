"""Errors that reach the user, each carrying its BIDS-App exit code.

Every part of hcld-bids raises one of these for a problem the user can fix (bad argument, missing file,
invalid dataset). :func:`hcld_bids.cli.run.main` turns them into one line on stderr and the exit code of
the BIDS execution specification; any other exception is a bug and exits 1.

=====  ==========================  ==========================================================
code   class                       meaning
=====  ==========================  ==========================================================
1      :class:`HCLDError`          failure (generic)
16     :class:`InvalidBIDSError`   BIDS_DIR is not a valid BIDS dataset
17     :class:`UnknownLevelError`  analysis level is not one of train, participant, group
18     :class:`NoDataError`        the labels and filters select no T1w image
64     :class:`UsageError`         bad command-line usage or option value
65     :class:`BadDataError`       input data are unusable (e.g. no site can be determined)
66     :class:`MissingInputError`  an input file or directory does not exist
73     :class:`CannotCreateOutputError`  an output or work directory cannot be created or written
=====  ==========================  ==========================================================
"""

from __future__ import annotations

import errno

EXIT_OK = 0


class HCLDError(Exception):
    """A failure explained to the user in one line; ``exit_code`` is what the process returns."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        """The message, flattened to one line."""
        return " ".join(str(self).split())


class InvalidBIDSError(HCLDError):
    """The input is not a BIDS dataset or fails validation."""

    exit_code = 16


class UnknownLevelError(HCLDError):
    """The analysis level is not one this app knows."""

    exit_code = 17


class NoDataError(HCLDError):
    """Participant/session labels or BIDS filters select nothing."""

    exit_code = 18


class UsageError(HCLDError):
    """A command-line argument or option value is wrong."""

    exit_code = 64


class BadDataError(HCLDError):
    """Input data exist but cannot be used (e.g. an image with no site, an empty volume)."""

    exit_code = 65


class MissingInputError(HCLDError):
    """A file or directory the run needs does not exist."""

    exit_code = 66


class CannotCreateOutputError(HCLDError):
    """An output or working directory cannot be created or written."""

    exit_code = 73


#: errno values that mean "the output cannot be written", whatever the file: disk full, quota, read-only.
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def output_error(err: OSError, where: str = "OUTPUT_DIR") -> CannotCreateOutputError:
    """A one-line exit-73 error for an ``OSError`` met while writing: names the file and says what to do."""
    target = err.filename if err.filename is not None else where
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return CannotCreateOutputError(
            f"cannot write {target}: the disk is full ({what}); free space on that file system or choose another "
            f"{where} (a rerun reuses what was finished)"
        )
    if err.errno == errno.EROFS:
        return CannotCreateOutputError(f"cannot write {target}: read-only file system; choose a writable {where}")
    return CannotCreateOutputError(
        f"cannot write {target} ({err.strerror or err}); check the permissions or choose a writable {where}"
    )


__all__ = [
    "EXIT_OK",
    "HCLDError",
    "InvalidBIDSError",
    "UnknownLevelError",
    "NoDataError",
    "UsageError",
    "BadDataError",
    "MissingInputError",
    "CannotCreateOutputError",
    "OUTPUT_ERRNOS",
    "output_error",
]
