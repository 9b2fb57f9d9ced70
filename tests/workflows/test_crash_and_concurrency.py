"""Crash safety and concurrency of the participant level, with real processes.

Four participant jobs, one subject each (as an HPC job array runs them), start at the same moment and write
into one OUTPUT_DIR with one shared work directory. Then one of those participants is run again into a fresh
OUTPUT_DIR and work directory, killed with SIGKILL (the whole process group: scheduler and workers) at
several points and rerun each time; its final outputs must equal, byte for byte, what the concurrent job
wrote for it.

What differs between two runs by design is left out of the comparison, and nothing else: each run's own
``logs/config-<run id>.toml`` and ``logs/run-<run id>.log``, and the run's id and wall time, which the
harmonized image's provenance sidecar and the participant report record.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.bids.validation import find_validator, run_validator
from hcld_bids.testing import hash_tree, make_bids_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SUBJECTS = {"01": "philips", "02": "siemens", "03": "uih", "04": "siemens"}
# --sloppy: these tests are about processes, locks and files, not preprocessing quality (about half the time)
STEPS = ["--ddim-inversion-steps", "4", "--ddim-sampling-steps", "2", "--sloppy"]
RUN_ID = re.compile(r"\d{8}-\d{6}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _command(bids: Path, out: Path, work: Path, model: Path, label: str) -> list[str]:
    return [sys.executable, "-m", "hcld_bids", str(bids), str(out), "participant", "--participant-label", label,
            "--target-site", "siemens", "--model", str(model), "-w", str(work), "--nprocs", "1",
            "--omp-nthreads", "1", "--skip-bids-validation", *STEPS]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    stream = open(log, "w")
    # a session of its own: killing its process group takes the nipype workers down with it
    return subprocess.Popen(cmd, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)


def _normalized(out: Path, subject: str) -> dict[str, bytes]:
    """Files of one participant plus the dataset-level files, with the run-specific values blanked."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or rel.startswith(("logs/config-", "logs/run-")):
            continue
        if not (rel.startswith(f"sub-{subject}") or "/" not in rel and not rel.startswith("sub-")
                or rel.startswith("logs/")):
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            content = json.loads(data)
            provenance = content.get("HCLD", {})
            provenance.pop("RunUUID", None)
            provenance.pop("WallTimeSeconds", None)
            data = json.dumps(content, sort_keys=True).encode()
        elif path.suffix == ".html":
            text = RUN_ID.sub("RUN", data.decode())
            text = re.sub(r"written \d{4}-\d\d-\d\d \d\d:\d\d UTC", "written", text)
            text = re.sub(r"(WallTimeSeconds\.[a-z]+</th><td class=\"code\">)[0-9.]+", r"\1", text)
            data = text.encode()
        files[rel] = data
    return files


def _assert_no_partial_outputs(out: Path):
    """Every image under its final name is complete and has its complete sidecar."""
    for image in out.glob("sub-*/anat/*.nii.gz"):
        assert np.isfinite(np.asarray(nib.load(image).dataobj, dtype=np.float32)).all(), image
        sidecar = image.with_name(image.name[: -len(".nii.gz")] + ".json")
        assert sidecar.is_file(), f"{image} without its sidecar"
        json.loads(sidecar.read_text())


@pytest.fixture(scope="module")
def concurrent(trained, tmp_path_factory):
    """Four participant processes started together into one OUTPUT_DIR and one work directory."""
    root = tmp_path_factory.mktemp("concurrent")
    bids = make_bids_dataset(root / "bids", subjects=SUBJECTS, scans_dir=REPO / "hcld_bids" / "data" / "t1w")
    before = hash_tree(bids)
    out, work = root / "out", root / "work"
    procs = {label: _start(_command(bids, out, work, trained.model, label), root / f"sub-{label}.log")
             for label in SUBJECTS}
    codes = {label: proc.wait(timeout=600) for label, proc in procs.items()}
    logs = {label: (root / f"sub-{label}.log").read_text() for label in SUBJECTS}
    return {"bids": bids, "before": before, "out": out, "work": work, "codes": codes, "logs": logs,
            "model": trained.model, "root": root}


def test_four_concurrent_participant_jobs_all_finish_without_lock_errors(concurrent):
    for label, code in concurrent["codes"].items():
        assert code == 0, concurrent["logs"][label][-3000:]
        assert "database is locked" not in concurrent["logs"][label]
        assert "Traceback" not in concurrent["logs"][label]
    assert hash_tree(concurrent["bids"]) == concurrent["before"]


def test_concurrent_jobs_write_one_valid_dataset_with_every_participant(concurrent, tmp_path):
    out = concurrent["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "hcld-bids"
    for label in SUBJECTS:
        anat = out / f"sub-{label}" / "anat"
        names = sorted(p.name for p in anat.iterdir())
        assert f"sub-{label}_space-MNI152NLin6Asym_res-2_desc-harmonized_T1w.nii.gz" in names
        assert all(name.startswith(f"sub-{label}_") for name in names), names
        assert (out / f"sub-{label}.html").is_file()
        sidecar = json.loads((anat / f"sub-{label}_space-MNI152NLin6Asym_res-2_desc-harmonized_T1w.json")
                             .read_text())
        assert sidecar["Sources"][0] == f"bids:raw:sub-{label}/anat/sub-{label}_T1w.nii.gz"
        assert sidecar["HCLD"]["SloppyPreprocessing"] is True
    assert not [p for p in out.rglob(".tmp-*")]  # no staging directory or temporary file left
    _assert_no_partial_outputs(out)
    validator = find_validator()
    if validator is None:
        pytest.skip("bids-validator-deno is not installed")
    assert run_validator(out, tmp_path / "report.json", validator).errors == []


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 300.0) -> bool:
    """Poll until ``ready()``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the kill point")


def test_participant_killed_at_several_points_then_rerun_equals_the_uninterrupted_run(concurrent, tmp_path):
    """Kill (SIGKILL, whole process group) after N4, while harmonizing and while the sinks write; each rerun
    resumes from the work directory; the final outputs equal those of the uninterrupted concurrent job."""
    bids, label = concurrent["bids"], "02"
    out, work = tmp_path / "out", tmp_path / "work"
    wf = work / "hcld_bids_wf" / f"sub_{label}_wf"
    kill_points = {
        "after N4 on the head": lambda: any(wf.rglob("n4_head/result_n4_head.pklz")),
        "while harmonizing": lambda: any(wf.rglob("harmonize/_node.pklz")) and time.sleep(0.3) is None,
        "while the sinks write": lambda: any((out / f"sub-{label}" / "anat").glob("*desc-harmonized_T1w.nii.gz")),
    }
    for n, (point, ready) in enumerate(kill_points.items()):
        proc = _start(_command(bids, out, work, concurrent["model"], label), tmp_path / f"kill{n}.log")
        reached = _wait_for(proc, ready)
        if reached:
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=60)
        assert reached and code == -signal.SIGKILL, f"{point}: ended with {code} before it could be killed"
        _assert_no_partial_outputs(out)
    final = _start(_command(bids, out, work, concurrent["model"], label), tmp_path / "final.log")
    assert final.wait(timeout=600) == 0, (tmp_path / "final.log").read_text()[-3000:]

    assert not [p for p in out.rglob(".tmp-*")], "the rerun left what the killed runs had half-written"
    assert len(list((out / "logs").glob("config-*.toml"))) == 4  # one per attempt
    expected = _normalized(concurrent["out"], label)
    got = _normalized(out, label)
    assert sorted(got) == sorted(expected)
    differ = [rel for rel in expected if got[rel] != expected[rel]]
    assert not differ, differ
    assert hash_tree(bids) == concurrent["before"]
