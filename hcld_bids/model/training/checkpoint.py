"""Training checkpoints in the work directory: everything needed to continue a run exactly.

One file, ``checkpoint.safetensors``, written atomically (temporary name, fsync, rename): the payload's tensors
as safetensors, and the rest of its structure (numbers, strings, lists, tuples, dicts with string or integer
keys, and where each tensor goes) as JSON in the file's metadata. Nothing is pickled, so a training state can
be kept in a repository and read without trusting it. A ``checkpoint.pt`` of an earlier version (a torch
pickle of the same payload) is still read, with ``torch.load(weights_only=True)``, and replaced at the next
save.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError

CHECKPOINT = "checkpoint.safetensors"
#: The pickled checkpoint of earlier versions (read only).
LEGACY_CHECKPOINT = "checkpoint.pt"


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


def _encode(value, tensors: dict):
    """``value`` as JSON-able data; its tensors go into ``tensors`` under generated names."""
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise TypeError(f"checkpoint dict keys must be str or int: {list(value)[:5]}")
        return {"__dict__": [[k, _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a training checkpoint")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {k: _decode(v, tensors) for k, v in value["__dict__"]}
    return value


def save_checkpoint(workdir: Path, payload: dict) -> Path:
    """Write ``payload`` (plus RNG states) to ``workdir/checkpoint.safetensors`` atomically."""
    from safetensors.torch import save

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    structure = _encode(dict(payload, rng=rng_state()), tensors)
    data = save(tensors, metadata={"structure": json.dumps(structure)})
    final = workdir / CHECKPOINT
    tmp = workdir / f".{CHECKPOINT}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    (workdir / LEGACY_CHECKPOINT).unlink(missing_ok=True)
    return final


def checkpoint_path(workdir: Path) -> Path:
    """The checkpoint file of ``workdir`` (the legacy pickle when only that one exists)."""
    path = Path(workdir) / CHECKPOINT
    legacy = Path(workdir) / LEGACY_CHECKPOINT
    return legacy if legacy.is_file() and not path.is_file() else path


def load_checkpoint(workdir: Path) -> dict | None:
    """The checkpoint of ``workdir``, or ``None`` when there is none."""
    path = checkpoint_path(workdir)
    if not path.is_file():
        return None
    try:
        if path.name == LEGACY_CHECKPOINT:
            return torch.load(path, map_location="cpu", weights_only=True)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            structure = json.loads((f.metadata() or {})["structure"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _decode(structure, tensors)
    except Exception as exc:  # a truncated or foreign file: say which and how to recover
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({type(exc).__name__}); delete it "
                              f"to start the stage afresh") from None
