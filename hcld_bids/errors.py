"""Exceptions that carry the exit code of the BIDS-Apps execution specification.

The command line catches :class:`HCLDError`, prints its one-line message and exits with
``exit_code``; no traceback reaches the user.
"""


class HCLDError(Exception):
    """Base class: a failure the user can act on, described in one line."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(HCLDError):
    """Wrong or contradictory command-line arguments."""

    exit_code = 64


class InvalidBIDSError(HCLDError):
    """The input dataset is not valid BIDS."""

    exit_code = 16


class NoDataError(HCLDError):
    """The participant/session/filters selected no data."""

    exit_code = 18


class BadDataError(HCLDError):
    """An input file exists but its content cannot be used."""

    exit_code = 65


class MissingInputError(HCLDError):
    """A required input file (template, model, image) does not exist."""

    exit_code = 66


class CannotCreateOutputError(HCLDError):
    """An output location cannot be written."""

    exit_code = 73
