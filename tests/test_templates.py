import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.errors import MissingInputError
from hcld_bids.templates import (
    check_templates,
    offline_templates,
    offline_templates_dir,
    seed_templateflow_home,
    template_filename,
)
from hcld_bids import templates

REPO = Path(__file__).resolve().parents[1]
TPL = "MNI152NLin6Asym"


def _run_python(code: str, home: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose TemplateFlow reads ``home`` at import."""
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_template_filename_follows_templateflow_naming():
    assert template_filename(TPL, 2, "T1w") == "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
    assert template_filename(TPL, 1, "mask", "brain") == "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"


def test_templateflow_home_is_the_seeded_test_directory(templateflow_home):
    assert templates.templateflow_home() == templateflow_home


def test_check_templates_returns_existing_files_of_seeded_home(templateflow_home, caplog):
    files = check_templates(TPL, 2)
    assert set(files) == {"T1w", "brain_mask", "description"}
    assert all(path.is_file() and path.stat().st_size > 0 for path in files.values())
    # TemplateFlow's files come first whenever they are there: no shipped copy, nothing said
    assert all(path.is_relative_to(templateflow_home) for path in files.values())
    assert not any(templates.is_shipped(path) for path in files.values())
    assert "shipped" not in caplog.text


def test_check_templates_reports_missing_template_with_fetch_command():
    with pytest.raises(MissingInputError) as info:
        check_templates(TPL, 1)
    message = str(info.value)
    assert "\n" not in message
    assert "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz" in message
    assert "python -m hcld_bids.fetch_templates --template MNI152NLin6Asym --resolution 1" in message
    assert info.value.exit_code == 66


def test_check_templates_in_empty_home_names_placeholders_without_downloading(tmp_path):
    code = (
        "from hcld_bids.templates import check_templates\n"
        "from hcld_bids.errors import MissingInputError\n"
        "try:\n"
        "    check_templates('MNI152NLin6Asym', 2, shipped=False)\n"
        "except MissingInputError as exc:\n"
        "    print('MESSAGE', exc)\n"
        "    raise SystemExit(exc.exit_code)\n"
    )
    home = tmp_path / "tf"
    result = _run_python(code, home)
    assert result.returncode == 66, result.stderr
    assert "Downloading" not in result.stderr + result.stdout
    message = result.stdout.split("MESSAGE ", 1)[1]
    # TemplateFlow fills an empty home with zero-byte placeholders; they must not pass as templates.
    assert "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz is an empty placeholder" in message
    assert "desc-brain_mask" in message
    assert f"TEMPLATEFLOW_HOME={home}" in message


def test_check_templates_rejects_non_gzip_file(tmp_path):
    seed_dir = tmp_path / "tf"
    seed_templateflow_home(seed_dir)
    (seed_dir / "tpl-MNI152NLin6Asym" / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz").write_text("<Error>AccessDenied</Error>")
    result = _run_python(
        "from hcld_bids.templates import check_templates\ncheck_templates('MNI152NLin6Asym', 2, shipped=False)", seed_dir)
    assert result.returncode != 0
    assert "not a gzip-compressed NIfTI" in result.stderr


def test_template_files_are_the_paths_templateflow_returns(tmp_path):
    home = tmp_path / "tf"
    seed_templateflow_home(home)
    code = (
        "import json\n"
        "from templateflow import api\n"
        "from hcld_bids.templates import template_files\n"
        "ours = template_files('MNI152NLin6Asym', 2)\n"
        "theirs = {'T1w': api.get('MNI152NLin6Asym', resolution=2, suffix='T1w', desc=None, extension='.nii.gz'),\n"
        "          'brain_mask': api.get('MNI152NLin6Asym', resolution=2, suffix='mask', desc='brain', extension='.nii.gz')}\n"
        "print(json.dumps({k: [str(ours[k]), str(theirs[k])] for k in theirs}))\n"
    )
    result = _run_python(code, home)
    assert result.returncode == 0, result.stderr
    pairs = json.loads(result.stdout.strip().splitlines()[-1])
    for ours, theirs in pairs.values():
        assert ours == theirs


def test_seed_replaces_empty_placeholders_and_keeps_real_files(tmp_path):
    tpl_dir = tmp_path / "tpl-MNI152NLin6Asym"
    tpl_dir.mkdir()
    placeholder = tpl_dir / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
    placeholder.touch()
    existing = tpl_dir / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"
    existing.write_bytes(b"\x1f\x8bnot ours")
    written = seed_templateflow_home(tmp_path)
    assert placeholder in written and placeholder.stat().st_size > 0
    assert existing not in written and existing.read_bytes() == b"\x1f\x8bnot ours"
    assert not list(tpl_dir.glob(".*.tmp"))


def test_offline_templates_ship_mni152nlin6asym_at_2mm():
    assert (TPL, 2) in offline_templates()
    assert (offline_templates_dir() / "tpl-MNI152NLin6Asym" / "NOTICE").is_file()


def test_offline_template_files_share_one_ras_grid_and_a_brain_sized_mask():
    t1w = nib.load(offline_templates_dir() / "tpl-MNI152NLin6Asym" / template_filename(TPL, 2, "T1w"))
    mask = nib.load(offline_templates_dir() / "tpl-MNI152NLin6Asym" / template_filename(TPL, 2, "mask", "brain"))
    assert t1w.shape == mask.shape == (91, 109, 91)
    assert nib.aff2axcodes(t1w.affine) == ("R", "A", "S")
    # TemplateFlow's MNI152NLin6Asym 2 mm grid: RAS, origin at (-90, -126, -72) mm.
    np.testing.assert_allclose(t1w.affine, np.array([[2, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]]))
    np.testing.assert_allclose(mask.affine, t1w.affine)
    volume_l = float((np.asarray(mask.dataobj) > 0).sum()) * 8 / 1e6
    assert 1.6 <= volume_l <= 1.9
    data = np.asarray(t1w.dataobj, dtype=float)
    inside = np.asarray(mask.dataobj) > 0
    # Whole head: plenty of non-zero voxels outside the brain, and the brain brighter than them.
    assert (data[~inside] > 0).mean() > 0.8
    assert np.median(data[inside]) > np.median(data[~inside])


def test_fetch_templates_offline_seeds_an_empty_home(tmp_path):
    home = tmp_path / "tf"
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "hcld_bids.fetch_templates", "--offline", "--resolution", "2"],
                            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert (home / "tpl-MNI152NLin6Asym" / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz").stat().st_size > 0


def test_fetch_templates_offline_cannot_provide_1mm(tmp_path):
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(tmp_path / "tf"), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "hcld_bids.fetch_templates", "--offline", "--resolution", "1"],
                            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 66
    assert result.stderr.startswith("hcld-bids: error: ") and result.stderr.count("\n") == 1


@pytest.fixture
def empty_templateflow(tmp_path, monkeypatch):
    """TemplateFlow without the files (an offline node: a skeleton of empty placeholders)."""
    home = tmp_path / "empty_tf"
    (home / f"tpl-{TPL}").mkdir(parents=True)
    for name in (template_filename(TPL, 2, "T1w"), template_filename(TPL, 2, "mask", "brain")):
        (home / f"tpl-{TPL}" / name).touch()
    monkeypatch.setattr(templates, "templateflow_home", lambda: home)
    monkeypatch.setattr(templates, "_ANNOUNCED", set())
    return home


def test_without_templateflow_files_the_shipped_copy_serves_with_one_line(empty_templateflow, caplog):
    files = check_templates(TPL, 2)
    again = check_templates(TPL, 2)
    assert files == again == templates.shipped_template_files(TPL, 2)
    assert all(templates.is_shipped(path) and path.stat().st_size > 0 for path in files.values())
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "\n" not in lines[0]  # said once, on one line
    assert "using the copy shipped with hcld-bids" in lines[0] and "empty placeholder" in lines[0]
    assert str(empty_templateflow) in lines[0]


def test_without_templateflow_files_a_template_that_is_not_shipped_is_still_66(empty_templateflow):
    with pytest.raises(MissingInputError) as info:
        check_templates(TPL, 1)
    assert "hcld-bids ships only MNI152NLin6Asym at resolution 2" in info.value.message
    with pytest.raises(MissingInputError):
        check_templates(TPL, 2, shipped=False)  # fetch_templates checks TemplateFlow's own files


def test_participant_level_runs_offline_on_the_shipped_template(empty_templateflow, scans_dir, tmp_path, capsys):
    from hcld_bids.cli.run import main
    from hcld_bids.testing import make_bids_dataset

    bids = make_bids_dataset(tmp_path / "bids", subjects={"01": "siemens"}, scans_dir=scans_dir)
    code = main([str(bids), str(tmp_path / "out"), "participant", "--target-site", "siteA", "--boilerplate-only",
                 "-w", str(tmp_path / "work"), "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("using the copy shipped with hcld-bids") == 1
    assert "copy distributed with hcld-bids" in (tmp_path / "out" / "logs" / "CITATION.md").read_text()


def test_fetch_templates_without_network_leads_with_the_shipped_copy(empty_templateflow, monkeypatch):
    from templateflow import api

    from hcld_bids import fetch_templates

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'templateflow.s3.amazonaws.com'")

    monkeypatch.setattr(api, "get", offline)
    with pytest.raises(MissingInputError) as info:
        fetch_templates.fetch(TPL, 2)
    assert info.value.message.startswith("no network: hcld-bids ships MNI152NLin6Asym at resolution 2; run "
                                         "`python -m hcld_bids.fetch_templates --offline`")
