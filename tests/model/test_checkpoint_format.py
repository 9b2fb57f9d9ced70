"""Training checkpoints are safetensors + JSON (no pickle), round-trip exactly, and old pickled ones still load."""

import torch

from hcld_bids.model.training.checkpoint import CHECKPOINT, LEGACY_CHECKPOINT, load_checkpoint, save_checkpoint


def _payload():
    return {"stage": "autoencoder", "step": 7, "config": {"patch": (64, 64, 64), "lr": 1e-3, "none": None},
            "optimizers": {"ae": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.ones(3, 2,
                                                                                                  dtype=torch.bfloat16)}},
                                  "param_groups": [{"betas": (0.9, 0.999), "params": [0]}]}},
            "models": {"ae": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}}}


def test_checkpoint_is_safetensors_and_round_trips_exactly(tmp_path):
    path = save_checkpoint(tmp_path, _payload())
    assert path.name == CHECKPOINT and path.read_bytes()[8:9] == b"{"  # safetensors: u64 header size, JSON header
    back = load_checkpoint(tmp_path)
    assert back["config"] == {"patch": (64, 64, 64), "lr": 1e-3, "none": None}
    state = back["optimizers"]["ae"]["state"]
    assert list(state) == [0] and state[0]["exp_avg"].dtype == torch.bfloat16
    assert back["optimizers"]["ae"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(back["models"]["ae"]["w"], _payload()["models"]["ae"]["w"])
    assert isinstance(back["rng"]["torch"], torch.Tensor)


def test_a_pickled_checkpoint_of_an_earlier_version_loads_and_is_replaced_at_the_next_save(tmp_path):
    torch.save(_payload(), tmp_path / LEGACY_CHECKPOINT)
    assert load_checkpoint(tmp_path)["step"] == 7
    save_checkpoint(tmp_path, dict(_payload(), step=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
    assert load_checkpoint(tmp_path)["step"] == 8
