"""Training checkpoints in the work directory: everything needed to continue a run exactly.

One file, ``checkpoint.pt``, written atomically (temporary name, fsync, rename). It holds only tensors,
numbers, strings, lists and dicts, so it is read back with ``torch.load(weights_only=True)``; it is our own
file in our own work directory, never a user-supplied model (bundles are safetensors + JSON).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(workdir: Path, payload: dict) -> Path:
    """Write ``payload`` (plus RNG states) to ``workdir/checkpoint.pt`` atomically."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, rng=rng_state())
    final = workdir / CHECKPOINT
    tmp = workdir / f".{CHECKPOINT}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def load_checkpoint(workdir: Path) -> dict | None:
    """The checkpoint of ``workdir``, or ``None`` when there is none."""
    path = Path(workdir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and how to recover
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({type(exc).__name__}); delete it "
                              f"to start the stage afresh") from None
