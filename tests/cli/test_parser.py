"""The argument parser: defaults, value checks, and usage errors that exit with 64."""

import argparse
from pathlib import Path

import pytest

from hcld_bids import __version__
from hcld_bids.cli.parser import build_parser, parse_mem_gb

BASE = ["bids", "out", "participant"]


def _parse(*extra):
    return build_parser().parse_args([*BASE, *extra])


def _usage_error(capsys, *extra):
    with pytest.raises(SystemExit) as info:
        _parse(*extra)
    err = capsys.readouterr().err
    return info.value.code, err


def test_defaults():
    args = _parse()
    assert (args.bids_dir, args.output_dir, args.analysis_level) == (Path("bids"), Path("out"), "participant")
    assert args.work_dir == Path("work")
    assert args.participant_label is None and args.session_label is None
    assert (args.device, args.ddim_inversion_steps, args.ddim_sampling_steps, args.random_seed) == ("auto", None, None, 0)
    assert args.harmonization_strength is None  # None: the model bundle's own inference settings
    assert args.output_spaces is None and args.model is None and args.site_column is None
    assert (args.ae_epochs, args.ldm_epochs, args.grad_accum, args.adv_burn_in_epochs) == (30, 80, 4, 5)
    assert (args.lr_ae, args.lr_disc_ae, args.lr_ldm, args.lr_disc_ldm) == (1e-4, 5e-4, 1e-4, 1e-5)
    assert (args.weight_content, args.weight_style, args.weight_adversarial) == (10, 10, 1)
    assert (args.weight_gradient, args.weight_noise) == (1e4, 1)
    assert args.resume is True and args.batch_size is None and args.patch_size is None
    assert args.nprocs is None and args.omp_nthreads is None and args.mem_gb is None
    assert not (args.skip_bids_validation or args.stop_on_first_crash or args.boilerplate_only or args.reports_only)
    assert args.verbose == 0


def test_labels_are_accepted_with_or_without_prefix():
    args = _parse("--participant-label", "sub-01", "02", "--session-label", "ses-pre", "post")
    assert args.participant_label == ["01", "02"]
    assert args.session_label == ["pre", "post"]


def test_fmriprep_underscore_spellings_work_but_stay_out_of_the_help():
    args = _parse("--participant_label", "sub-03", "--skip_bids_validation", "--boilerplate_only")
    assert args.participant_label == ["03"] and args.skip_bids_validation and args.boilerplate_only
    assert "--participant_label" not in build_parser().format_help()


@pytest.mark.parametrize("label", ["sub-0_1", "01-a", "sub-", "ü"])
def test_invalid_labels_are_usage_errors(capsys, label):
    code, err = _usage_error(capsys, "--participant-label", label)
    assert code == 64
    assert err.count("\n") == 1 and err.startswith("hcld-bids: error: argument --participant-label")


@pytest.mark.parametrize(
    ("text", "gb"),
    [("8", 8), ("8G", 8), ("8GB", 8), ("8gb", 8), ("8000M", 8), ("8000MB", 8), ("16GiB", 16 * 2**30 / 1e9),
     ("512MiB", 512 * 2**20 / 1e9), ("1.5T", 1500), ("2048K", 0.002048), ("0.5", 0.5)],
)
def test_memory_accepts_units(text, gb):
    assert parse_mem_gb(text) == pytest.approx(gb)
    assert _parse("--mem", text).mem_gb == pytest.approx(gb)


@pytest.mark.parametrize("text", ["8X", "0", "0G", "-1G", "GB", "8iB", "eight", ""])
def test_bad_memory_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_mem_gb(text)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_devices(device):
    assert _parse("--device", device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "mps"])
def test_unknown_devices_are_usage_errors(capsys, device):
    code, err = _usage_error(capsys, "--device", device)
    assert code == 64 and "invalid device" in err


def test_target_site_and_reference_image_are_mutually_exclusive(capsys):
    code, err = _usage_error(capsys, "--target-site", "A", "--reference-image", "ref.nii.gz")
    assert code == 64 and "not allowed with argument" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--ddim-sampling-steps", "0"), ("--nprocs", "-2"), ("--lr-ae", "0"), ("--weight-style", "-1"),
     ("--patch-size", "40"), ("--random-seed", "-1"), ("--omp-nthreads", "x")],
)
def test_out_of_range_numbers_are_usage_errors(capsys, flag, value):
    code, err = _usage_error(capsys, flag, value)
    assert code == 64 and f"argument {flag}" in err


def test_training_flags_are_parsed():
    args = _parse("--ae-epochs", "3", "--batch-size", "2", "--patch-size", "48", "--no-resume", "--lr-ldm", "2e-4",
                  "--weight-gradient", "0")
    assert (args.ae_epochs, args.batch_size, args.patch_size, args.resume, args.lr_ldm, args.weight_gradient) == (
        3, 2, 48, False, 2e-4, 0.0)


def test_missing_positionals_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["bids"])
    assert info.value.code == 64
    assert "the following arguments are required" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"hcld-bids {__version__}\n"


def test_help_groups_training_options():
    help_text = build_parser().format_help()
    assert "Training (train level):" in help_text
    training = help_text.split("Training (train level):")[1].split("Performance:")[0]
    assert "--ae-epochs" in training and "--weight-noise" in training and "--resume" in training


@pytest.mark.parametrize("text", ["0", "0.0", "-0.2", "1.5", "strong", "nan", ""])
def test_bad_harmonization_strengths_are_usage_errors(capsys, text):
    code, err = _usage_error(capsys, "--harmonization-strength", text)
    assert code == 64
    assert err.count("\n") == 1 and "--harmonization-strength" in err and "(0, 1]" in err


@pytest.mark.parametrize("text", ["0.05", "0.3", "1"])
def test_harmonization_strengths(text):
    assert _parse("--harmonization-strength", text).harmonization_strength == float(text)
