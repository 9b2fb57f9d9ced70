"""Time the group level on many participants' outputs: ``run_group`` on N generated participants.

    python benchmarks/group_scale.py [--n 1000] [--jobs 2] [--variants 12] [--keep DIR]

Outputs are written the way the participant level writes them (91 x 109 x 91 float32 NIfTI-gz images,
JSON sidecars with the HCLD and QC blocks): ``--variants`` distinct images per site are made from the
vendored real scans (hcld_bids/data/t1w, three sites, one damaged output among them), then every
participant gets a byte copy of one variant under its own name, so that all N x 3 files are distinct
files that the group level must read and decompress. participants.tsv carries ages. Prints the time
of generating the outputs and of the group level (table + report), per image and in total.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hcld_bids.reports import metrics  # noqa: E402
from hcld_bids.reports.synthetic import (  # noqa: E402
    ImageSpec,
    fake_harmonize,
    resample_scan,
    write_image,
    write_participants_tsv,
)

SCANS = REPO / "hcld_bids" / "data" / "t1w"
SITES = {
    "siteA": [SCANS / "siemens_prismafit3T_xa30_s6_norm.nii.gz"],
    "siteB": [SCANS / "siemens_prismafit3T_xa30_s5_nonorm.nii.gz"],
    "siteC": [SCANS / "uih_umr770_3T_run1_2mm.nii.gz", SCANS / "uih_umr770_3T_run2_2mm.nii.gz"],
}
TARGET = "siteA"


def make_variants(directory: Path, per_site: int) -> list[tuple[str, Path]]:
    """Distinct outputs (``per_site`` per site, one damaged) in ``directory``; returns (site, prefix dir)."""
    prepared = []
    for site, scans in SITES.items():
        for k in range(per_site):
            preproc, mask = resample_scan(scans[k % len(scans)], seed=1 + len(prepared))
            prepared.append((site, preproc, mask))
    target = [(p, m) for site, p, m in prepared if site == TARGET]
    target_hist = metrics.site_histogram((p for p, _ in target), (m for _, m in target))
    reference = np.concatenate([p[m > 0] for p, m in target])
    variants = []
    for index, (site, preproc, mask) in enumerate(prepared):
        damage = "shift" if index == len(prepared) - 1 else None
        spec = ImageSpec(f"v{index:03d}", SCANS, site, seed=index, damage=damage)
        write_image(directory, spec, preproc=preproc, mask=mask, target_site=TARGET, target_hist=target_hist,
                    harmonized=fake_harmonize(preproc, mask, reference, damage))
        variants.append((site, directory / f"sub-v{index:03d}" / "anat"))
    return variants


def clone(variant_dir: Path, source_label: str, output_dir: Path, label: str) -> None:
    """Copy one variant's files to participant ``label`` (names and sidecar Sources renamed)."""
    anat = output_dir / f"sub-{label}" / "anat"
    anat.mkdir(parents=True)
    for path in variant_dir.iterdir():
        name = path.name.replace(f"sub-{source_label}", f"sub-{label}")
        if path.suffix == ".json":
            (anat / name).write_text(path.read_text().replace(f"sub-{source_label}", f"sub-{label}"))
        else:
            shutil.copyfile(path, anat / name)


def generate(root: Path, n: int, per_site: int) -> tuple[Path, Path, float]:
    start = time.perf_counter()
    variants = make_variants(root / "variants", per_site)
    output_dir = root / "out"
    output_dir.mkdir()
    (output_dir / "dataset_description.json").write_text(json.dumps(
        {"Name": "group_scale benchmark", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    rng = np.random.default_rng(0)
    rows = {}
    for i in range(n):
        site, variant_dir = variants[i % len(variants)]
        label = f"{i:05d}"
        clone(variant_dir, variant_dir.parent.name[4:], output_dir, label)
        rows[label] = {"site": site, "age": round(float(rng.uniform(20, 80)), 1)}
    bids_dir = write_participants_tsv(root / "bids", rows)
    return output_dir, bids_dir, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="participants (one T1w each)")
    parser.add_argument("--jobs", type=int, default=2, help="n_jobs of run_group (processes)")
    parser.add_argument("--variants", type=int, default=12, help="distinct images per site")
    parser.add_argument("--keep", type=Path, help="generate into this directory and keep it")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.ERROR, format="  %(message)s")
    logging.getLogger("hcld_bids.reports").setLevel(logging.INFO)  # phase times of run_group
    logging.getLogger("hcld_bids.reports").addFilter(lambda record: record.getMessage().startswith("group:"))
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hcld-group-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        output_dir, bids_dir, generate_s = generate(root, args.n, args.variants)
        size = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file()) / 1e9
        print(f"generated {args.n} participants ({3 * args.n} images, {size:.2f} GB) in {generate_s:.0f} s")
        from hcld_bids.reports.group import run_group

        start = time.perf_counter()
        tsv, html = run_group(output_dir, bids_dir, n_jobs=args.jobs)
        seconds = time.perf_counter() - start
        rows = len(tsv.read_text().splitlines()) - 1
        print(f"run_group(n_jobs={args.jobs}): {seconds:.1f} s for {rows} images "
              f"({1000 * seconds / rows:.0f} ms per image); report {html.stat().st_size / 1e6:.1f} MB")
        print(f"target: {args.n} participants in < 300 s on 2 cores -> {'met' if seconds < 300 else 'NOT met'}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
