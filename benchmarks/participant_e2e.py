#!/usr/bin/env python
"""Wall time of the participant level for one participant, end to end, with a fresh work directory.

Builds a one-participant BIDS dataset from a bundled real scan, then times ``hcld-bids BIDS OUT participant
--target-site siteA`` with the bundled demo model (validation, N4, registration, brain mask, harmonization,
QC, derivatives, report, boilerplate), in a fresh process, and prints the time of every preprocessing and
harmonization node from nipype's results, then where the process's wall time went, from the time stamps of
the run's log (``OUTPUT_DIR/logs/run-*.log``): start-up (interpreter, imports, configuration), BIDS indexing,
the model and input checks and the graph, the workers' start, the nodes (preprocessing, harmonization, the
rest), the scheduler's gaps between nodes, the reports and methods text, the exit; and the total without the
harmonization node (whose cost depends on the model and its inference regime).

    PYTHONPATH=$PWD python benchmarks/participant_e2e.py [--scanner siemens] [--nprocs 2] [--keep DIR] [--quick]

``--quick`` (for the tests) harmonizes with 2 + 1 DDIM steps instead of the model's own, and preprocesses
with ``--sloppy`` (fewer N4 iterations, a fast affine registration).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+) (\w+): (.*)$")


def _log_events(log: Path) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every line of a run log."""
    events = []
    for line in log.read_text().splitlines():
        match = _LOG_LINE.match(line)
        if match:
            stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((stamp, match.group(4)))
    return events


def phases(log: Path, start: float, end: float, nodes: dict[str, float]) -> list[tuple[str, float]]:
    """Where the wall time of a run went, from its log's time stamps and the nodes' own durations."""
    events = _log_events(log)

    def first(pattern):
        return next(t for t, message in events if re.search(pattern, message))

    t_config = first(r"^Config saved to")
    t_indexed = first(r"^\d+ T1w image\(s\) of \d+ participant")
    t_run = first(r"^harmonizing \d+ T1w image\(s\)")
    t_reports = first(r"^writing the participant report")
    t_done = first(r"^participant level finished")
    starts, busy = {}, []
    for stamp, message in events:
        if match := re.match(r'^\[Node\] Setting-up "([^"]+)"', message):
            starts[match.group(1).rsplit(".", 1)[1]] = stamp
        elif match := re.match(r'^\[Node\] Finished "([^"]+)"', message):
            if match.group(1) in starts:
                busy.append((starts.pop(match.group(1)), stamp))
    first_node = min(b for b, _ in busy)
    last_node = max(e for _, e in busy)
    covered, reach = 0.0, first_node
    for b, e in sorted(busy):  # union of the nodes' busy intervals
        covered += max(0.0, e - max(b, reach))
        reach = max(reach, e)
    harmonize = sum(v for k, v in nodes.items() if k.endswith(".harmonize"))
    preprocessing = sum(v for k, v in nodes.items() if k.startswith("anat_preproc_wf."))
    return [
        ("phase: start-up (interpreter, imports, configuration)", t_config - start),
        ("phase: BIDS indexing and sites", t_indexed - t_config),
        ("phase: model and input checks, graph", t_run - t_indexed),
        ("phase: workers' start (run start to first node)", first_node - t_run),
        ("phase: nodes running (union of their intervals)", covered),
        ("phase: scheduler gaps between nodes", (last_node - first_node) - covered),
        ("phase: after the nodes (methods text, clean-up)", t_reports - last_node),
        ("phase: participant report and summary", t_done - t_reports),
        ("phase: exit", end - t_done),
        ("nodes: preprocessing (sum)", preprocessing),
        ("nodes: harmonization", harmonize),
        ("nodes: the others (sum)", sum(nodes.values()) - preprocessing - harmonize),
        ("total without the harmonization node", (end - start) - harmonize),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scanner", default="siemens", choices=["philips", "siemens", "uih"])
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="work here and keep the outputs (default: a temporary directory)")
    ap.add_argument("--quick", action="store_true", help="2 + 1 DDIM steps and --sloppy (smoke test of the script)")
    args = ap.parse_args(argv)

    from hcld_bids.templates import seed_templateflow_home
    from hcld_bids.testing.dataset import make_bids_dataset

    root = args.keep or Path(tempfile.mkdtemp(prefix="hcld_e2e_"))
    bids = make_bids_dataset(root / "bids", subjects={"01": args.scanner})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if "TEMPLATEFLOW_HOME" not in env:
        seed_templateflow_home(root / "templateflow")
        env["TEMPLATEFLOW_HOME"] = str(root / "templateflow")
    cmd = [sys.executable, "-m", "hcld_bids", str(bids), str(root / "out"), "participant", "--target-site", "siteA",
           "-w", str(root / "work"), "--nprocs", str(args.nprocs), "--skip-bids-validation"]
    if args.quick:
        cmd += ["--ddim-inversion-steps", "2", "--ddim-sampling-steps", "1", "--sloppy"]
    epoch = time.time()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return proc.returncode
    from nipype.utils.filemanip import loadpkl

    print(f"# participant level, one {args.scanner} T1w (3 mm scan), demo model, {args.nprocs} processes, "
          f"fresh work directory" + (", 2 + 1 DDIM steps and --sloppy (--quick)" if args.quick else ""))
    print("node\tseconds")
    nodes = {}
    for result in sorted((root / "work" / "hcld_bids_wf" / "sub_01_wf").rglob("result_*.pklz")):
        runtime = getattr(loadpkl(result), "runtime", None)
        if runtime is not None and getattr(runtime, "duration", None):
            nodes[f"{result.parent.parent.name}.{result.parent.name}"] = runtime.duration
    for name, seconds in sorted(nodes.items()):
        print(f"{name}\t{seconds:.1f}")
    print(f"total (process wall time, start-up and writing included)\t{wall:.1f}")
    (log,) = (root / "out" / "logs").glob("run-*.log")
    print("# where the wall time went (time stamps of the run's log)")
    for name, seconds in phases(log, epoch, epoch + wall, nodes):
        print(f"{name}\t{seconds:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
