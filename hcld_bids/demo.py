"""``hcld-bids-demo OUT``: the whole app on real scans from three vendors, offline, in a few minutes.

1. Writes a BIDS dataset ``OUT/bids`` from the real T1w scans shipped with the package (Philips, Siemens and
   UIH 3 T scanners, 3 mm, BSD-2-Clause; the site of each participant in ``participants.tsv``).
2. ``train --add-site-prototypes``: preprocesses the three scans and adds a style prototype of each vendor
   to a copy of the bundled demo model (``OUT/derivatives/models/hcld``); nothing is trained.
3. ``participant --target-site <vendor>``: harmonizes every scan toward that vendor (the preprocessing of
   step 2 is reused from the work directory) and writes the derivatives and participant reports.
4. ``group``: the group table and QC report.

Without ``TEMPLATEFLOW_HOME`` in the environment, the template ships with the package and is copied to
``OUT/templateflow``, so the demo needs no network.

Every step is an ordinary ``hcld-bids`` run; the commands are printed so that they can be rerun by hand.
The demo model was trained on simulated sites of real IXI heads; it shows how the app works and what it
writes, and is not meant for research results (train your own with the ``train`` level).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from . import __version__
from .testing.dataset import SCANNERS, make_bids_dataset

#: Vendors of the bundled scans (participant label -> scanner key of :data:`SCANNERS`).
DEMO_SUBJECTS = {"01": "philips", "02": "siemens", "03": "uih"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hcld-bids-demo",
        description="Run hcld-bids end to end on a 3-vendor BIDS dataset built from the bundled real scans.",
    )
    ap.add_argument("output", type=Path, help="directory for the demo dataset, work directory and outputs")
    ap.add_argument("--target-site", default="siemens", choices=sorted(SCANNERS),
                    help="vendor to harmonize toward (default: %(default)s)")
    ap.add_argument("--nprocs", type=int, default=None, help="processes (default: all CPUs)")
    ap.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda (default: %(default)s)")
    ap.add_argument("--fresh", action="store_true", help="delete OUTPUT first (otherwise a rerun resumes)")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    ap.add_argument("--version", action="version", version=f"hcld-bids-demo {__version__}")
    return ap


def _step(title: str, argv: list[str]) -> int:
    from .cli.run import main as hcld_bids

    print(f"\n== {title}\n$ hcld-bids {shlex.join(argv)}", flush=True)
    return hcld_bids(argv)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.output.absolute()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    bids, deriv, work = out / "bids", out / "derivatives", out / "work"
    if not os.environ.get("TEMPLATEFLOW_HOME"):
        # self-contained and offline: the template the demo model needs ships with the package (TemplateFlow
        # reads this variable when first imported, which has not happened yet in this process)
        from .templates import seed_templateflow_home

        seed_templateflow_home(out / "templateflow")
        os.environ["TEMPLATEFLOW_HOME"] = str(out / "templateflow")
    if not (bids / "dataset_description.json").is_file():
        if bids.exists():
            shutil.rmtree(bids)  # a dataset left half-written by an interrupted demo
        from .errors import HCLDError

        try:
            make_bids_dataset(bids, subjects=DEMO_SUBJECTS, scans_dir=Path(__file__).parent / "data" / "t1w")
        except (HCLDError, OSError) as err:
            print(f"hcld-bids-demo: error: cannot write the demo dataset in {bids}: {err}", file=sys.stderr)
            return 73 if isinstance(err, OSError) else getattr(err, "exit_code", 1)
    print(f"demo BIDS dataset: {bids} ({len(DEMO_SUBJECTS)} participants: "
          f"{', '.join(f'sub-{s} {v}' for s, v in DEMO_SUBJECTS.items())})")
    common = ["-w", str(work), "--device", args.device] + (["--nprocs", str(args.nprocs)] if args.nprocs else [])
    common += ["-v"] * args.verbose
    steps = [
        ("1/3 style prototypes of the three vendors (added to a copy of the demo model)",
         [str(bids), str(deriv), "train", "--add-site-prototypes", *common]),
        (f"2/3 harmonize every scan toward {args.target_site}",
         [str(bids), str(deriv), "participant", "--target-site", args.target_site, "--output-spaces",
          "MNI152NLin6Asym", "T1w", *common]),
        ("3/3 group QC report", [str(bids), str(deriv), "group", *common]),
    ]
    for title, step_argv in steps:
        code = _step(title, step_argv)
        if code != 0:
            print(f"hcld-bids-demo: error: step {title.split()[0]} failed (exit {code}); rerun the same command to "
                  "resume", file=sys.stderr)
            return code
    print(f"\nDone. Open {deriv / 'group_report.html'} and {deriv}/sub-01.html; methods text in "
          f"{deriv / 'logs' / 'CITATION.md'}.")
    return 0


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
