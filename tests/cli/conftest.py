"""Fixtures for the command line: run main() in-process, and a stand-in for the level workflows."""

from __future__ import annotations

import sys
import types

import pytest

from hcld_bids.cli.run import main


class Dispatch:
    """Stands in for hcld_bids.levels: records what run_level received and returns ``code``."""

    def __init__(self):
        self.calls = []
        self.code = None
        self.error = None

    def run_level(self, config, records):
        self.calls.append((config, records))
        if self.error is not None:
            raise self.error
        return self.code


@pytest.fixture
def dispatch(monkeypatch):
    """Install a recording run_level as hcld_bids.levels for one test."""
    recorder = Dispatch()
    levels = types.ModuleType("hcld_bids.levels")
    levels.__path__ = []
    levels.run_level = recorder.run_level
    monkeypatch.setitem(sys.modules, "hcld_bids.levels", levels)
    return recorder


@pytest.fixture
def run_cli(capsys):
    """Run ``main(argv)``; return (exit code, stderr)."""

    def _run(*argv):
        code = main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return _run
