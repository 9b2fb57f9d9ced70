"""Config: built once, saved as TOML, read back identical; the model resolution rule."""

from pathlib import Path

import pytest

from hcld_bids import config as cfg


def _config(tmp_path, **workflow):
    execution = cfg.ExecutionConfig(
        bids_dir=tmp_path / "bids",
        output_dir=tmp_path / "out",
        analysis_level="participant",
        work_dir=tmp_path / "work",
        participant_label=["01", "02"],
        bids_filters={"t1w": {"session": None, "acquisition": "mprage"}},
    )
    return cfg.Config(
        execution=execution,
        nipype=cfg.NipypeConfig(nprocs=4, omp_nthreads=2, mem_gb=7.5, plugin_args={"n_procs": 4, "x": None}),
        workflow=cfg.WorkflowConfig(**workflow),
    )


def test_toml_round_trip_gives_an_equal_config(tmp_path):
    config = _config(tmp_path, target_site="siemens", output_spaces=["T1w"], reference_image=None)
    path = config.to_toml(tmp_path / "c.toml")
    assert cfg.Config.from_toml(path) == config


def test_none_fields_are_left_out_of_the_file_and_come_back_as_none(tmp_path):
    config = _config(tmp_path)
    text = config.to_toml(tmp_path / "c.toml").read_text()
    assert "target_site" not in text
    assert "batch_size" not in text
    back = cfg.Config.from_toml(tmp_path / "c.toml")
    assert back.workflow.target_site is None
    assert back.training.batch_size is None
    assert back.training.patch_size is None


def test_paths_come_back_as_path_objects(tmp_path):
    back = cfg.Config.from_toml(_config(tmp_path, reference_image=tmp_path / "ref.nii.gz").to_toml(tmp_path / "c.toml"))
    assert isinstance(back.execution.bids_dir, Path)
    assert back.workflow.reference_image == tmp_path / "ref.nii.gz"


def test_filters_with_null_survive_toml(tmp_path):
    back = cfg.Config.from_toml(_config(tmp_path).to_toml(tmp_path / "c.toml"))
    assert back.execution.bids_filters == {"t1w": {"session": None, "acquisition": "mprage"}}
    assert back.nipype.plugin_args == {"n_procs": 4, "x": None}


def test_unknown_setting_in_a_file_is_an_error(tmp_path):
    path = _config(tmp_path).to_toml(tmp_path / "c.toml")
    path.write_text(path.read_text().replace("[training]\n", "[training]\nfoo = 1\n"))
    with pytest.raises(ValueError, match="foo"):
        cfg.Config.from_toml(path)


def test_save_writes_the_same_file_to_work_dir_and_logs(tmp_path):
    config = _config(tmp_path)
    saved = config.save()
    assert saved == [
        tmp_path / "work" / config.file_name,
        tmp_path / "out" / "logs" / config.file_name,
    ]
    assert saved[0].read_text() == saved[1].read_text()
    assert config.file_name.startswith("config-") and config.file_name.endswith(".toml")
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith(".")]


def test_run_uuids_are_unique_and_sortable_by_time():
    from datetime import datetime, timezone

    first = cfg.new_run_uuid(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert first.startswith("20240102-030405_")
    assert cfg.new_run_uuid() != cfg.new_run_uuid()


def test_training_defaults_follow_the_method():
    training = cfg.TrainingConfig()
    assert (training.ae_epochs, training.ldm_epochs, training.grad_accum) == (30, 80, 4)
    assert (training.lr_ae, training.lr_disc_ae, training.lr_ldm, training.lr_disc_ldm) == (1e-4, 5e-4, 1e-4, 1e-5)
    assert training.adv_burn_in_epochs == 5
    assert (training.weight_content, training.weight_style, training.weight_adversarial) == (10, 10, 1)
    assert (training.weight_gradient, training.weight_noise) == (1e4, 1)


def test_native_output_is_requested_by_t1w_space():
    assert cfg.WorkflowConfig(output_spaces=["T1w"]).native_output
    assert not cfg.WorkflowConfig().native_output


def test_model_given_on_the_command_line_wins(tmp_path):
    path, source = cfg.resolve_model(tmp_path / "m", tmp_path / "out", "participant")
    assert (path, source) == (tmp_path / "m", "argument")


def test_model_defaults_to_a_bundle_trained_into_output_dir(tmp_path):
    bundle = tmp_path / "out" / "models" / "hcld"
    bundle.mkdir(parents=True)
    assert cfg.resolve_model(None, tmp_path / "out", "participant") == (cfg.DEMO_MODEL_DIR, "demo")
    (bundle / cfg.MODEL_MANIFEST_NAME).write_text("{}")
    assert cfg.resolve_model(None, tmp_path / "out", "participant") == (bundle, "trained")


def test_train_level_writes_its_bundle_into_output_dir_by_default(tmp_path):
    assert cfg.resolve_model(None, tmp_path / "out", "train") == (tmp_path / "out" / "models" / "hcld", "train-output")
