"""A tiny model trained through the real ``train`` level on a 3-site fixture, shared by the level tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from hcld_bids.cli.run import main
from hcld_bids.testing import hash_tree, make_bids_dataset

#: The smallest networks the train level accepts; a few optimizer steps each (seconds on a CPU).
TINY_TRAINING = [
    "--ae-channels", "8", "8", "8", "--unet-channels", "8", "8", "8", "--latent-channels", "2",
    "--ae-steps", "2", "--ldm-steps", "2", "--patch-size", "32", "--batch-size", "1", "--grad-accum", "1",
    "--checkpoint-every", "1",
]
COMMON = ["--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation"]


@dataclass
class Trained:
    bids: Path
    out: Path
    work: Path
    model: Path
    bids_hash: str
    preproc_results: dict  # result file of every anatomical node -> mtime, right after training
    preproc_after_participant: dict | None = None  # the same, right after the participant level

    @property
    def manifest(self) -> dict:
        return json.loads((self.model / "manifest.json").read_text())


@pytest.fixture(scope="session")
def trained(tmp_path_factory, scans_dir) -> Trained:
    """sub-01 philips, sub-02 siemens, sub-03 uih (sites in participants.tsv), a model trained on them."""
    root = tmp_path_factory.mktemp("levels")
    bids = make_bids_dataset(root / "bids", scans_dir=scans_dir)
    before = hash_tree(bids)
    out, work = root / "out", root / "work"
    code = main([str(bids), str(out), "train", "-w", str(work), *COMMON, *TINY_TRAINING])
    assert code == 0
    assert hash_tree(bids) == before
    results = {p: p.stat().st_mtime_ns for p in work.glob("hcld_bids_wf/sub_*_wf/t1w_wf/anat_preproc_wf/*/result_*.pklz")}
    return Trained(bids=bids, out=out, work=work, model=out / "models" / "hcld", bids_hash=before,
                   preproc_results=results)
