"""The speed and scale benchmarks' own logic (what they run and how they count), without running them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_participant_scale_splits_participants_and_cores_between_jobs(tmp_path):
    scale = _load("participant_scale")
    labels = ["01", "02", "03", "04", "05"]
    (one,) = scale.commands(("one", 2), tmp_path / "bids", tmp_path / "out", tmp_path / "w", labels, 8, "cuda", [])
    assert one[one.index("--nprocs") + 1] == "8" and one[one.index("--omp-nthreads") + 1] == "2"
    assert one[one.index("--participant-label") + 1:] == labels and one[one.index("--device") + 1] == "cuda"
    jobs = scale.commands(("jobs", 2), tmp_path / "bids", tmp_path / "out", tmp_path / "w", labels, 8, "cpu", [])
    assert [cmd[cmd.index("--participant-label") + 1:] for cmd in jobs] == [["01", "03", "05"], ["02", "04"]]
    assert all(cmd[cmd.index("--nprocs") + 1] == "4" for cmd in jobs)
    assert len({cmd[cmd.index("-w") + 1] for cmd in jobs}) == 2  # a work directory each, one OUTPUT_DIR
    assert {cmd[4] for cmd in jobs} == {str(tmp_path / "out")}
    row = scale.summarize(("jobs", 2), 5, 100.0, {"preprocessing": 50.0, "harmonization": 10.0, "rest": 5.0})
    assert row["participants_per_hour"] == 180.0 and row["harmonization_s_per_participant"] == 2.0
    with pytest.raises(Exception, match="layout"):
        scale.parse_layout("many:2")


@pytest.mark.parametrize("variant", ["n4-head-20", "no-n4-head", "affine-fast", "n4-head-20+affine-fast",
                                     "other-seed"])
def test_preprocessing_cuts_change_only_what_their_variant_says(variant):
    from hcld_bids.config import DEMO_MODEL_DIR
    from hcld_bids.levels.model import open_model

    cuts = _load("preprocessing_cuts")
    model = open_model(DEMO_MODEL_DIR)
    default, wf = cuts.build("default", model, 2), cuts.build(variant, model, 2)
    register, n4_head = wf.get_node("register"), wf.get_node("n4_head")
    assert (n4_head is None) == (variant == "no-n4-head")
    if n4_head is not None:
        assert n4_head.inputs.iterations == ([20] * 4 if "n4-head-20" in variant
                                             else default.get_node("n4_head").inputs.iterations)
    assert bool(register.inputs.sloppy) == ("affine-fast" in variant)
    assert register.inputs.random_seed == (1 if variant == "other-seed" else default.get_node("register").inputs.random_seed)
    source = [u.name for u, v in wf._graph.in_edges(register)]
    assert source == (["validate"] if variant == "no-n4-head" else ["n4_head"])
