"""main(): exit codes and one-line messages for every input problem, and the config handed to the level."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hcld_bids.config import Config
from hcld_bids.errors import BadDataError
from hcld_bids.testing import hash_tree, make_bids_dataset, tree_snapshot

REPO = Path(__file__).resolve().parents[2]


def _error_only(err):
    """The stderr of a failed run: exactly one line, and no traceback."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("hcld-bids: WARNING")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def dataset(tmp_path, scans_dir):
    return make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir)


def test_full_run_hands_the_config_and_t1w_list_to_the_level(dataset, tmp_path, dispatch, run_cli):
    before = hash_tree(dataset)
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": None}}))
    code, err = run_cli(
        dataset, tmp_path / "out", "participant", "-w", tmp_path / "work", "--participant-label", "sub-01", "03",
        "--target-site", "uih", "--mem", "6GB", "--nprocs", "4", "--output-spaces", "T1w",
        "--ddim-inversion-steps", "20", "--harmonization-strength", "0.4", "--random-seed", "7", "--device", "cpu",
        "--bids-filter-file", filters,
    )
    assert code == 0
    # The only message: the demo-model warning (no --model, no trained bundle in OUTPUT_DIR).
    assert err.count("\n") == 1 and err.startswith("hcld-bids: WARNING: no --model and no trained model in ")
    (config, records), = dispatch.calls
    execution, workflow, nipype = config.execution, config.workflow, config.nipype
    assert execution.bids_dir == dataset and execution.output_dir == tmp_path / "out"
    assert execution.work_dir == tmp_path / "work" and execution.analysis_level == "participant"
    assert execution.participant_label == ["01", "03"]
    assert execution.bids_filters == {"t1w": {"acquisition": None}} and execution.bids_filter_file == filters
    assert (workflow.target_site, workflow.reference_image, workflow.output_spaces) == ("uih", None, ["T1w"])
    assert (workflow.ddim_inversion_steps, workflow.ddim_sampling_steps, workflow.random_seed) == (20, None, 7)
    assert workflow.harmonization_strength == 0.4
    assert workflow.device == "cpu" and workflow.model_source == "demo"
    assert (nipype.nprocs, nipype.omp_nthreads, nipype.mem_gb) == (4, 4, 6.0)
    assert nipype.plugin == "MultiProc" and nipype.plugin_args["n_procs"] == 4 and nipype.plugin_args["memory_gb"] == 6
    assert [(r.relpath, r.site) for r in records] == [
        ("sub-01/anat/sub-01_T1w.nii.gz", "philips"),
        ("sub-03/anat/sub-03_T1w.nii.gz", "uih"),
    ]
    # One config, saved in the work dir and the logs, reads back equal.
    saved_work = tmp_path / "work" / config.file_name
    saved_logs = tmp_path / "out" / "logs" / config.file_name
    assert saved_work.read_text() == saved_logs.read_text()
    assert Config.from_toml(saved_logs) == config
    description = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert hash_tree(dataset) == before


def test_sloppy_reaches_the_config_with_a_warning_and_is_off_by_default(dataset, tmp_path, dispatch, run_cli):
    code, err = run_cli(dataset, tmp_path / "out", "participant", "-w", tmp_path / "w", "--target-site", "uih",
                        "--sloppy", "--skip-bids-validation")
    assert code == 0
    assert "hcld-bids: WARNING: --sloppy: low-quality preprocessing for testing" in err
    config, _ = dispatch.calls[-1]
    assert config.workflow.sloppy is True
    assert Config.from_toml(tmp_path / "out" / "logs" / config.file_name).workflow.sloppy is True
    code, err = run_cli(dataset, tmp_path / "out", "participant", "-w", tmp_path / "w", "--target-site", "uih",
                        "--skip-bids-validation")
    assert code == 0 and "--sloppy" not in err
    assert dispatch.calls[-1][0].workflow.sloppy is False


def test_work_dir_defaults_to_work_in_the_current_directory(dataset, tmp_path, dispatch, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _ = run_cli(dataset, tmp_path / "out", "group", "--skip-bids-validation")
    assert code == 0
    config, _ = dispatch.calls[0]
    assert config.execution.work_dir == tmp_path / "work"
    assert (tmp_path / "work" / config.file_name).is_file()
    # The group level only reads OUTPUT_DIR: no dataset description written for it.
    assert not (tmp_path / "out" / "dataset_description.json").exists()


def test_omp_threads_default_to_at_most_eight(dataset, tmp_path, dispatch, run_cli):
    run_cli(dataset, tmp_path / "out", "train", "-w", tmp_path / "w", "--nprocs", "16", "--skip-bids-validation")
    config, _ = dispatch.calls[0]
    assert (config.nipype.nprocs, config.nipype.omp_nthreads) == (16, 8)
    assert config.workflow.model == tmp_path / "out" / "models" / "hcld"
    assert config.workflow.model_source == "train-output"


def test_nprocs_defaults_to_the_cpus_this_process_may_use(dataset, tmp_path, dispatch, run_cli):
    run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation")
    nipype = dispatch.calls[0][0].nipype
    assert nipype.nprocs == len(os.sched_getaffinity(0))
    assert nipype.omp_nthreads == min(8, nipype.nprocs)


def test_plugin_file_sets_plugin_and_arguments(dataset, tmp_path, dispatch, run_cli):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: LegacyMultiProc\nplugin_args:\n  maxtasksperchild: 2\n")
    code, _ = run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation",
                      "--use-plugin", plugin, "--nprocs", "3")
    assert code == 0
    nipype = dispatch.calls[0][0].nipype
    assert (nipype.plugin, nipype.plugin_args, nipype.use_plugin) == (
        "LegacyMultiProc", {"maxtasksperchild": 2, "n_procs": 3}, plugin)


def test_level_exit_code_is_returned(dataset, tmp_path, dispatch, run_cli):
    dispatch.code = 3
    assert run_cli(dataset, tmp_path / "o", "group", "-w", tmp_path / "w", "--skip-bids-validation")[0] == 3


def test_missing_level_implementation_is_a_clear_failure(dataset, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "hcld_bids.levels", None)
    code, err = run_cli(dataset, tmp_path / "o", "group", "-w", tmp_path / "w", "--skip-bids-validation")
    assert code == 1
    assert _error_only(err) == "hcld-bids: error: the group level is not available in this build"


def test_hcld_errors_from_the_level_become_one_line_and_their_code(dataset, tmp_path, dispatch, run_cli):
    dispatch.error = BadDataError("sub-01_T1w.nii.gz is 4D;\n give a 3D image")
    code, err = run_cli(dataset, tmp_path / "o", "group", "-w", tmp_path / "w", "--skip-bids-validation")
    assert code == 65
    assert _error_only(err) == "hcld-bids: error: sub-01_T1w.nii.gz is 4D; give a 3D image"


def test_unexpected_errors_exit_1_with_a_crash_file(dataset, tmp_path, dispatch, run_cli):
    dispatch.error = RuntimeError("boom")
    code, err = run_cli(dataset, tmp_path / "o", "group", "-w", tmp_path / "w", "--skip-bids-validation")
    assert code == 1
    line = _error_only(err)
    assert line.startswith("hcld-bids: error: unexpected RuntimeError: boom; traceback in ")
    crash = Path(line.split("traceback in ")[1])
    assert crash.parent == tmp_path / "o" / "logs" and crash.name.startswith("crash-")
    assert "Traceback" in crash.read_text() and "boom" in crash.read_text()


def test_verbose_prints_the_traceback(dataset, tmp_path, dispatch, run_cli):
    dispatch.error = RuntimeError("boom")
    code, err = run_cli(dataset, tmp_path / "o", "group", "-w", tmp_path / "w", "--skip-bids-validation", "-v")
    assert code == 1
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err


# --- input checks, each with its exit code and one-line message ---------------------------------------


def test_missing_bids_dir_exits_66(tmp_path, run_cli):
    code, err = run_cli(tmp_path / "nope", tmp_path / "out", "participant", "--target-site", "x")
    assert code == 66
    assert _error_only(err) == f"hcld-bids: error: BIDS_DIR {tmp_path / 'nope'} does not exist"
    assert not (tmp_path / "out").exists()


def test_unknown_level_exits_17(dataset, tmp_path, run_cli):
    code, err = run_cli(dataset, tmp_path / "out", "participants")
    assert code == 17
    assert _error_only(err) == ("hcld-bids: error: unknown analysis level 'participants' (did you mean participant?); "
                                "choose one of train, participant, group")


@pytest.mark.parametrize(
    ("where", "match"),
    [
        (lambda ds, tmp: [ds, ds], "OUTPUT_DIR .* is BIDS_DIR or inside it"),
        (lambda ds, tmp: [ds, ds / "derivatives"], "OUTPUT_DIR .* is BIDS_DIR or inside it"),
        (lambda ds, tmp: [ds, ds / "derivatives" / "a" / "b"], "only as BIDS_DIR/derivatives/<name>"),
        (lambda ds, tmp: [ds, ds / "sub-01" / "hcld"], "OUTPUT_DIR .* is BIDS_DIR or inside it"),
        (lambda ds, tmp: [ds, tmp / "out", "-w", ds / "work"], "work directory .* is inside BIDS_DIR"),
        (lambda ds, tmp: [ds, tmp / "out", "--bids-database-dir", ds / "db"], "--bids-database-dir .* inside BIDS_DIR"),
    ],
)
def test_writing_into_bids_dir_is_refused_with_64(dataset, tmp_path, run_cli, where, match):
    import re

    before = hash_tree(dataset)
    code, err = run_cli(*where(dataset, tmp_path), "group")
    assert code == 64
    assert re.search(match, _error_only(err))
    assert hash_tree(dataset) == before


def test_output_dir_under_bids_dir_derivatives_is_allowed_and_never_indexed(dataset, tmp_path, dispatch, run_cli):
    out = dataset / "derivatives" / "hcld"
    before = {rel: v for rel, v in tree_snapshot(dataset).items() if not rel.startswith("derivatives")}
    code, err = run_cli(dataset, out, "participant", "--target-site", "uih", "-w", tmp_path / "w",
                        "--skip-bids-validation")
    assert code == 0, err
    (config, records), = dispatch.calls
    assert config.execution.output_dir == out
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    # our own outputs, even ones named like raw T1w images, are not taken as inputs by a later run
    (out / "sub-01" / "anat").mkdir(parents=True)
    (out / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(
        (dataset / "sub-01" / "anat" / "sub-01_T1w.nii.gz").read_bytes())
    code, _ = run_cli(dataset, out, "participant", "--target-site", "uih", "-w", tmp_path / "w",
                      "--skip-bids-validation")
    assert code == 0
    assert [r.relpath for r in dispatch.calls[1][1]] == [r.relpath for r in records] == [
        f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz" for i in (1, 2, 3)]
    assert {rel: v for rel, v in tree_snapshot(dataset).items() if not rel.startswith("derivatives")} == before


def test_unwritable_output_exits_73(dataset, tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_cli(dataset, blocker / "out", "group", "-w", tmp_path / "w")
    assert code == 73
    assert _error_only(err).startswith(f"hcld-bids: error: cannot create or write OUTPUT_DIR {blocker / 'out'}")


def test_participant_level_needs_a_target(dataset, tmp_path, run_cli):
    code, err = run_cli(dataset, tmp_path / "out", "participant")
    assert code == 64
    assert _error_only(err) == "hcld-bids: error: the participant level needs --target-site SITE or --reference-image FILE"


def test_missing_reference_image_exits_66(dataset, tmp_path, run_cli):
    code, err = run_cli(dataset, tmp_path / "out", "participant", "--reference-image", tmp_path / "ref.nii.gz")
    assert code == 66
    assert _error_only(err) == f"hcld-bids: error: --reference-image {tmp_path / 'ref.nii.gz'} does not exist"


def test_missing_model_exits_66_except_for_train_which_creates_it(dataset, tmp_path, dispatch, run_cli):
    code, err = run_cli(dataset, tmp_path / "out", "participant", "--target-site", "x", "--model", tmp_path / "m")
    assert code == 66
    assert _error_only(err) == f"hcld-bids: error: --model {tmp_path / 'm'} does not exist (give a model bundle directory)"
    code, _ = run_cli(dataset, tmp_path / "out", "train", "-w", tmp_path / "w", "--skip-bids-validation",
                      "--model", tmp_path / "m")
    assert code == 0
    assert dispatch.calls[0][0].workflow.model == tmp_path / "m"
    assert dispatch.calls[0][0].workflow.model_source == "argument"


def test_usage_errors_exit_64_with_one_line(dataset, tmp_path, run_cli):
    code, err = run_cli(dataset, tmp_path / "out", "participant", "--target-site", "a", "--reference-image", "b")
    assert code == 64
    assert _error_only(err).startswith("hcld-bids: error: argument --reference-image: not allowed with argument")


def test_invalid_filter_file_exits_64_naming_it(dataset, tmp_path, run_cli):
    bad = tmp_path / "filters.json"
    bad.write_text("{not json")
    code, err = run_cli(dataset, tmp_path / "out", "group", "--bids-filter-file", bad)
    assert code == 64
    assert _error_only(err).startswith(f"hcld-bids: error: --bids-filter-file {bad} is not valid JSON")


def test_invalid_output_space_exits_64(dataset, tmp_path, run_cli):
    code, err = run_cli(dataset, tmp_path / "out", "group", "--output-spaces", "MNI152NLin6Asym:res-2")
    assert code == 64
    assert "--output-spaces: invalid space 'MNI152NLin6Asym:res-2'" in _error_only(err)


def test_invalid_bids_exits_16(tmp_path, scans_dir, run_cli):
    dataset = make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir)
    (dataset / "dataset_description.json").unlink()
    code, err = run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w")
    assert code == 16
    line = _error_only(err)
    assert line.startswith(f"hcld-bids: error: BIDS_DIR {dataset} is not valid BIDS: ")
    assert "--skip-bids-validation" in line


def test_skip_bids_validation_lets_an_invalid_dataset_through(tmp_path, scans_dir, dispatch, run_cli):
    dataset = make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir)
    (dataset / "dataset_description.json").unlink()
    code, _ = run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation")
    assert code == 0 and len(dispatch.calls[0][1]) == 3


def test_unknown_participant_exits_18_listing_labels(dataset, tmp_path, run_cli):
    code, err = run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation",
                        "--participant-label", "09")
    assert code == 18
    assert _error_only(err) == (
        "hcld-bids: error: participant label(s) not found in BIDS_DIR: sub-09; available: sub-01, sub-02, sub-03"
    )
    code, err = run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation",
                        "--participant-label", "1")
    assert code == 18 and "sub-1 (did you mean sub-01 for sub-1?); available:" in _error_only(err)


@pytest.mark.parametrize(("typed", "meant"), [
    (["--target-sit", "uih"], "--target-site"),
    (["--Target-Site", "uih"], "--target-site"),
    (["--participant_lable", "01"], "--participant-label"),
    (["--ddim-steps", "3"], "--ddim-inversion-steps or --ddim-sampling-steps"),
])
def test_misspelled_flags_get_a_did_you_mean(dataset, tmp_path, run_cli, typed, meant):
    code, err = run_cli(dataset, tmp_path / "out", "participant", *typed)
    assert code == 64
    assert f"(did you mean {meant}?)" in _error_only(err)


def test_filters_matching_nothing_exit_18(dataset, tmp_path, run_cli):
    filters = tmp_path / "f.json"
    filters.write_text(json.dumps({"t1w": {"run": 3}}))
    code, err = run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation",
                        "--bids-filter-file", filters)
    assert code == 18
    assert _error_only(err).startswith("hcld-bids: error: no T1w image in BIDS_DIR matches the selection (")


def test_image_without_site_exits_65(tmp_path, scans_dir, run_cli):
    dataset = make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir, missing_site=["02"], with_sidecars=False)
    code, err = run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation")
    assert code == 65
    line = _error_only(err)
    assert line.startswith("hcld-bids: error: no site found for sub-02/anat/sub-02_T1w.nii.gz: ")
    assert "the 'site' cell of sub-02 in" in line and "sub-02/anat/sub-02_T1w.nii.gz has no JSON sidecar" in line


# --- the real console entry, in a subprocess ------------------------------------------------------------


def _module(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "hcld_bids", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def test_python_m_hcld_bids_help_and_version(tmp_path):
    from hcld_bids import __version__

    assert _module("--version", cwd=tmp_path).stdout == f"hcld-bids {__version__}\n"
    proc = _module("--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: hcld-bids ")


def test_python_m_hcld_bids_errors_are_one_line_with_the_exit_code(tmp_path):
    proc = _module(tmp_path / "missing", tmp_path / "out", "group", cwd=tmp_path)
    assert proc.returncode == 66
    assert proc.stderr == f"hcld-bids: error: BIDS_DIR {tmp_path / 'missing'} does not exist\n"


def test_unwritable_database_dir_exits_73(dataset, tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation",
                        "--bids-database-dir", blocker / "db")
    assert code == 73
    assert _error_only(err).startswith(f"hcld-bids: error: cannot create the BIDS index in {blocker}")


def test_main_leaves_the_logging_setup_as_it_found_it(dataset, tmp_path, dispatch, run_cli):
    import logging

    logger = logging.getLogger("hcld_bids")
    before = (logger.handlers[:], logger.level, logger.propagate)
    run_cli(dataset, tmp_path / "out", "group", "-w", tmp_path / "w", "--skip-bids-validation", "-vv")
    assert (logger.handlers[:], logger.level, logger.propagate) == before
