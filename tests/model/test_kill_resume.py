"""Training killed with SIGKILL continues from its last checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    from hcld_bids.model.training import AutoencoderTrainConfig, train_autoencoder
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    volumes = [rng.random((32, 32, 32), dtype=np.float32) for _ in range(3)]
    cfg = AutoencoderTrainConfig(autoencoder=dict(channels=(8, 8, 8), latent_channels=2, num_res_blocks=1,
                                                  attention_levels=(False, False, False), norm_groups=4),
                                 steps=int(sys.argv[2]), batch_size=1, patch_size=(16, 16, 16), disc_channels=4,
                                 disc_layers=2, adv_warmup_epochs=0.5, progress=False, checkpoint_every=1)
    result = train_autoencoder(volumes, cfg, sys.argv[1], device="cpu")
    print("complete" if result.complete else "incomplete")
""")


def _run(workdir: Path, steps: int, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir), str(steps)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_checkpoint_and_matches_the_uninterrupted_run(tmp_path):
    steps = 40
    full = _run(tmp_path / "full", steps)
    victim = _run(tmp_path / "killed", steps)
    history = tmp_path / "killed" / "history.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once a few steps are checkpointed, long before the end
        if history.is_file() and len(history.read_text().splitlines()) > 6:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    done_before_kill = len(_rows(history))
    assert 0 < done_before_kill < steps

    resumed = _run(tmp_path / "killed", steps)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert out.strip() == "complete"
    full_out, full_err = full.communicate(timeout=300)
    assert full.returncode == 0, full_err[-2000:]
    # same steps, same losses: the resumed run restored weights, optimizers, RNG and step count exactly
    assert _rows(history) == _rows(tmp_path / "full" / "history.csv")
    logged = [int(r["step"]) for r in _rows(history)]
    assert logged == list(range(logged[0], logged[0] + steps))  # every step once, none repeated after the kill
