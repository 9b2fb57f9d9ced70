#!/usr/bin/env python
"""Wall time of the participant level for one participant, end to end, with a fresh work directory.

Builds a one-participant BIDS dataset from a bundled real scan, then times ``hcld-bids BIDS OUT participant
--target-site siteA`` with the bundled demo model (validation, N4, registration, brain mask, harmonization,
QC, derivatives, report, boilerplate), in a fresh process, and prints the time of every preprocessing and
harmonization node from nipype's results.

    PYTHONPATH=$PWD python benchmarks/participant_e2e.py [--scanner siemens] [--nprocs 2] [--keep DIR] [--quick]

``--quick`` (for the tests) harmonizes with 2 + 1 DDIM steps instead of the default 30 + 10, and preprocesses
with ``--sloppy`` (fewer N4 iterations, a fast affine registration).
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
    for result in sorted((root / "work").glob("hcld_bids_wf/sub_01_wf/t1w_wf/*/*/result_*.pklz")):
        runtime = getattr(loadpkl(result), "runtime", None)
        if runtime is not None and getattr(runtime, "duration", None):
            print(f"{result.parent.parent.name}.{result.parent.name}\t{runtime.duration:.1f}")
    print(f"total (process wall time, start-up and writing included)\t{wall:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
