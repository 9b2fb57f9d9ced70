"""The error classes carry the exit codes of the BIDS execution specification."""

import pytest

from hcld_bids import errors


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.HCLDError, 1),
        (errors.InvalidBIDSError, 16),
        (errors.UnknownLevelError, 17),
        (errors.NoDataError, 18),
        (errors.UsageError, 64),
        (errors.BadDataError, 65),
        (errors.MissingInputError, 66),
        (errors.CannotCreateOutputError, 73),
    ],
)
def test_each_error_class_carries_its_exit_code(cls, code):
    err = cls("something")
    assert err.exit_code == code
    assert isinstance(err, errors.HCLDError)


def test_exit_code_can_be_overridden_per_instance():
    err = errors.HCLDError("x", exit_code=70)
    assert err.exit_code == 70
    assert errors.HCLDError("y").exit_code == 1


def test_message_is_flattened_to_one_line():
    err = errors.BadDataError("first line\n  second   line\n")
    assert err.message == "first line second line"
