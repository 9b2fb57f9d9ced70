#!/usr/bin/env python
"""Participants per hour on one node: one participant job with many participants, or several jobs at once.

Builds a BIDS dataset of ``--participants`` participants from the bundled scans, then runs the participant
level (demo model, fresh work directories, one shared OUTPUT_DIR per layout) in each layout of ``--layouts``
and times it from the first process's start to the last one's end:

* ``one:T`` -- one ``hcld-bids participant`` process for all of them, ``--nprocs CORES --omp-nthreads T``
  (nipype runs up to CORES / T steps at once, several participants side by side);
* ``jobs:J`` -- J processes started together, as J array tasks on one node would be, the participants split
  between them, each with ``--nprocs CORES / J --omp-nthreads 1`` and its own work directory.

For each layout it prints participants per hour, the seconds of nodes per participant (sum of the nodes'
own durations: preprocessing, harmonization) and the wall time. The per-participant node seconds are what a
bigger node divides by its cores; the harmonization's share is what a GPU takes off them
(``harmonize_speed.py`` gives the GPU's volumes per second).

    PYTHONPATH=$PWD python benchmarks/participant_scale.py [--participants 4] [--cores 2] \\
        [--layouts one:1,one:2,jobs:2] [--device cpu] [--quick]

``--quick`` harmonizes with 2 + 1 DDIM steps and preprocesses with ``--sloppy`` (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCANNERS = ("siemens", "uih", "philips")


def parse_layout(text: str) -> tuple[str, int]:
    kind, _, value = text.partition(":")
    if kind not in ("one", "jobs") or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"layout {text!r}: use one:<threads per step> or jobs:<processes>")
    return kind, int(value)


def commands(layout: tuple[str, int], bids: Path, out: Path, work: Path, labels: list[str], cores: int,
             device: str, extra: list[str]) -> list[list[str]]:
    """The ``hcld-bids participant`` command lines of a layout (started together)."""
    kind, value = layout
    base = [sys.executable, "-m", "hcld_bids", str(bids), str(out), "participant", "--target-site", "siteA",
            "--skip-bids-validation", "--device", device, *extra]
    if kind == "one":
        return [base + ["-w", str(work / "job0"), "--nprocs", str(cores), "--omp-nthreads", str(min(value, cores)),
                        "--participant-label", *labels]]
    jobs = min(value, len(labels))
    share = max(1, cores // jobs)
    return [base + ["-w", str(work / f"job{j}"), "--nprocs", str(share), "--omp-nthreads", "1",
                    "--participant-label", *labels[j::jobs]] for j in range(jobs)]


def node_seconds(work: Path) -> dict[str, float]:
    """Sum of the nodes' own durations in the work directories of a layout: preprocessing, harmonization, rest."""
    from nipype.utils.filemanip import loadpkl

    sums = {"preprocessing": 0.0, "harmonization": 0.0, "rest": 0.0}
    for result in work.rglob("result_*.pklz"):
        runtime = getattr(loadpkl(result), "runtime", None)
        seconds = float(getattr(runtime, "duration", 0.0) or 0.0) if runtime is not None else 0.0
        key = ("preprocessing" if "anat_preproc_wf" in result.parts
               else "harmonization" if result.parent.name == "harmonize" else "rest")
        sums[key] += seconds
    return sums


def summarize(layout: tuple[str, int], participants: int, wall: float, nodes: dict[str, float]) -> dict:
    return {"layout": f"{layout[0]}:{layout[1]}", "participants": participants, "wall_s": wall,
            "participants_per_hour": 3600.0 * participants / wall,
            **{f"{k}_s_per_participant": v / participants for k, v in nodes.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=4)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--layouts", default="one:1,one:2,jobs:2",
                    type=lambda s: [parse_layout(x) for x in s.split(",") if x])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="work here and keep everything (default: a temporary directory)")
    ap.add_argument("--quick", action="store_true", help="2 + 1 DDIM steps and --sloppy (smoke test)")
    args = ap.parse_args(argv)

    from hcld_bids.templates import seed_templateflow_home
    from hcld_bids.testing.dataset import make_bids_dataset

    root = args.keep or Path(tempfile.mkdtemp(prefix="hcld_scale_"))
    labels = [f"{i + 1:02d}" for i in range(args.participants)]
    bids = make_bids_dataset(root / "bids", subjects={label: SCANNERS[i % len(SCANNERS)]
                                                      for i, label in enumerate(labels)})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if "TEMPLATEFLOW_HOME" not in env:
        seed_templateflow_home(root / "templateflow")
        env["TEMPLATEFLOW_HOME"] = str(root / "templateflow")
    extra = ["--ddim-inversion-steps", "2", "--ddim-sampling-steps", "1", "--sloppy"] if args.quick else []
    columns = ["layout", "participants", "wall_s", "participants_per_hour", "preprocessing_s_per_participant",
               "harmonization_s_per_participant", "rest_s_per_participant"]
    print(f"# participant level, {args.participants} participants (bundled 3 mm scans), demo model, "
          f"{args.cores} cores, device {args.device}, fresh work directories"
          + (", 2 + 1 DDIM steps and --sloppy (--quick)" if args.quick else ""))
    print("\t".join(columns))
    for n, layout in enumerate(args.layouts):
        out, work = root / f"out{n}", root / f"work{n}"
        start = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for cmd in commands(layout, bids, out, work, labels, args.cores, args.device, extra)]
        errors = [(p.wait(), p.stderr.read()) for p in procs]
        wall = time.perf_counter() - start
        failed = [err for code, err in errors if code != 0]
        if failed:
            print(failed[0][-2000:], file=sys.stderr)
            return 1
        row = summarize(layout, args.participants, wall, node_seconds(work))
        print("\t".join(f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
