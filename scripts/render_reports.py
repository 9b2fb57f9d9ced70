"""Render HTML reports to PNG with headless Chromium, so that they can be looked at without a browser.

    python scripts/render_reports.py OUTPUT_DIR [--out DIR] [--width 1400] [--height 16000]
    python scripts/render_reports.py --fixture DIR    # build the test fixture's reports first, then render

Renders OUTPUT_DIR/group_report.html and every OUTPUT_DIR/sub-*.html (and logs/CITATION.html) to
<out>/<name>.png. Chromium screenshots its window only, so the window is made --height pixels tall
and the empty page bottom is trimmed off afterwards; a page taller than the window is reported.
Needs the Debian package ``chromium`` (``apt-get install -y chromium``) or CHROMIUM=/path/to/binary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
]


def find_chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    sys.exit("Chromium not found: apt-get install -y chromium, or set CHROMIUM=/path/to/chromium")


def trim_bottom(png: Path) -> tuple[int, bool]:
    """Cut the rows below the last non-background row; returns (height, page filled the window)."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    background = pixels[-1, 0]
    rows = np.nonzero(np.any(np.abs(pixels.astype(int) - background).sum(axis=2) > 12, axis=1))[0]
    last = int(rows[-1]) + 1 if rows.size else pixels.shape[0]
    full = last >= pixels.shape[0] - 2
    Image.fromarray(pixels[: min(pixels.shape[0], last + 16)]).save(png)
    return last, full


def render(chromium: str, html: Path, png: Path, width: int, height: int) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hcld-chromium-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                   f"--window-size={width},{height}", "--virtual-time-budget=5000", html.resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if result.returncode != 0 or not png.is_file():
        sys.exit(f"chromium failed on {html} (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    last, full = trim_bottom(png)
    note = "  (page taller than the window: raise --height)" if full else ""
    print(f"{png}  {width} x {last} px{note}")
    return png


def build_fixture(directory: Path) -> Path:
    """The reports of the test fixture (tests/reports/reports_fixture.py) in ``directory``; returns OUTPUT_DIR."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reports"))
    from reports_fixture import build_fixture_outputs  # noqa: E402 - test helper, not part of the package

    from hcld_bids.reports.group import run_group
    from hcld_bids.reports.participant import write_participant_report

    output_dir, bids_dir = build_fixture_outputs(directory)
    for subject in sorted({p.name[4:] for p in output_dir.glob("sub-*") if p.is_dir()}):
        write_participant_report(output_dir, subject)
    run_group(output_dir, bids_dir)
    return output_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", nargs="?", type=Path, help="OUTPUT_DIR holding the reports")
    parser.add_argument("--fixture", type=Path, help="build the test fixture's reports in this directory")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: OUTPUT_DIR/../report-png)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=16000)
    parser.add_argument("--only", nargs="*", help="page names to render (default: all)")
    args = parser.parse_args(argv)
    if args.fixture:
        output_dir = build_fixture(args.fixture)
    elif args.output_dir:
        output_dir = args.output_dir
    else:
        parser.error("give OUTPUT_DIR or --fixture DIR")
    pages = sorted(output_dir.glob("*.html")) + sorted((output_dir / "logs").glob("CITATION.html"))
    if args.only:
        pages = [p for p in pages if p.stem in args.only or p.name in args.only]
    if not pages:
        sys.exit(f"no HTML reports in {output_dir}")
    chromium = find_chromium()
    out = args.out or output_dir.parent / "report-png"
    for page in pages:
        render(chromium, page, out / f"{page.stem}.png", args.width, args.height)
    return 0


if __name__ == "__main__":
    sys.exit(main())
