"""The ANTs version of the methods text is asked of the library once per installation, not in every run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hcld_bids.preproc import _ants


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HCLD_BIDS_CACHE_DIR", str(tmp_path / "cache"))
    _ants.ants_version.cache_clear()
    yield tmp_path / "cache"
    _ants.ants_version.cache_clear()


def test_the_version_is_remembered_per_library_and_asked_again_when_the_library_changes(cache_dir, monkeypatch):
    asked = []
    monkeypatch.setattr(_ants, "_ask_ants_version", lambda: asked.append(1) or "2.5.1.test")
    assert _ants.ants_version() == "2.5.1.test" and len(asked) == 1
    assert (cache_dir / "ants-version.json").is_file()
    _ants.ants_version.cache_clear()
    assert _ants.ants_version() == "2.5.1.test" and len(asked) == 1  # read back, not asked
    monkeypatch.setattr(_ants, "_library_key", lambda: "another-build:1:2")
    _ants.ants_version.cache_clear()
    assert _ants.ants_version() == "2.5.1.test" and len(asked) == 2


def test_an_unwritable_cache_is_no_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HCLD_BIDS_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(_ants, "_ask_ants_version", lambda: "2.5.1.test")
    _ants.ants_version.cache_clear()
    try:
        assert _ants.ants_version() == "2.5.1.test"
    finally:
        _ants.ants_version.cache_clear()


def test_a_fresh_process_with_a_remembered_version_does_not_import_ants(cache_dir):
    import os

    _ants._write_cached_version(_ants._library_key(), "2.9.9.remembered")
    code = ("import sys; from hcld_bids.preproc._ants import ants_version; print(ants_version(), "
            "'ants' in sys.modules)")
    env = dict(os.environ, HCLD_BIDS_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2.9.9.remembered", "False"]
