#!/usr/bin/env python
"""Turn the IXI heads into a multi-site BIDS training set and a traveling-subject held-out set.

    python scripts/make_ixi_sites.py OUT_ROOT [--ixi ../shared/data/ixi-hh-2mm]
        [--sites siteA,siteB,siteC,siteD] [--seed 0] [--n-train N] [--n-heldout M] [--force]
    python scripts/make_ixi_sites.py --print-split [--ixi ...]

Writes two BIDS datasets (DatasetType raw) under OUT_ROOT:

- ``OUT_ROOT/train``: every training subject rendered at exactly one simulated site
  (:mod:`hcld_bids.simulate`), assigned deterministically and balanced across sites and across sex and
  age; the site is the ``site`` column of participants.tsv and ``ManufacturersModelName`` of the sidecar.
  Unpaired by construction: no head is seen at two sites.
- ``OUT_ROOT/heldout``: the fixed held-out subjects of ``hcld_bids/data/ixi_split.json``, each rendered at
  every site, one session per site (``ses-<site>``, ``site`` column of sub-<label>_sessions.tsv), and the
  unchanged original scan in ``derivatives/original`` as the clean reference. These subjects never enter
  ``train``.

The image of (subject, site) is seeded by ``derive_seed(--seed, scan_id, site)``, so it is the same
whether the subject is in train or held out and whatever else is generated.

The output appears under its final name only when complete (built in a temporary sibling directory,
then renamed). An existing OUT_ROOT is replaced only with ``--force``.

Data credit: IXI dataset (brain-development.org), CC BY-SA 3.0; 2 mm resampling by the NiChart project.
The generated datasets are derived from IXI and carry the same license.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file from a checkout, without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from hcld_bids import CODE_URL, __version__  # noqa: E402
from hcld_bids.simulate import SITES, SiteEffect, derive_seed, simulate  # noqa: E402

SPLIT_FILE = REPO_ROOT / "hcld_bids" / "data" / "ixi_split.json"
DEFAULT_IXI = REPO_ROOT.parent / "shared" / "data" / "ixi-hh-2mm"
IMAGE_SUFFIX = "_T1_2mm.nii.gz"
BIDS_VERSION = "1.10.0"
LICENSE = "CC BY-SA 3.0"

# Exit codes of the BIDS execution spec.
EX_OK, EX_FAILURE, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT = 0, 1, 64, 65, 66, 73

#: How the committed held-out subset was chosen (printed by --print-split, stored in the JSON).
SPLIT_RULE = (
    "Scans with known age and sex, per sex sorted by (age, scan_id) and cut into 6 equal-count age "
    "bins (numpy.array_split); numpy.random.default_rng(seed) picks 2 scans per bin without replacement, "
    "bins visited F then M, youngest first. The list is ordered round by round (first pick of every "
    "bin, then the second), so any prefix of 12 is still balanced."
)
SPLIT_BINS_PER_SEX = 6
SPLIT_PER_BIN = 2

ACKNOWLEDGEMENTS = (
    "T1-weighted images of the IXI dataset (Information eXtraction from Images, EPSRC GR/S21533/02), "
    "Hammersmith Hospital, https://brain-development.org/ixi-dataset/, licensed CC BY-SA 3.0; "
    "resampled to 2 mm by the NiChart project. Scanner differences are simulated by hcld-bids."
)
HOW_TO_ACKNOWLEDGE = (
    "Credit the IXI dataset (https://brain-development.org/ixi-dataset/, CC BY-SA 3.0) and state that "
    "the site differences are simulated (hcld-bids, scripts/make_ixi_sites.py)."
)


class UserError(Exception):
    """A problem the user can fix; carries the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- inputs


def read_ixi(ixi_dir: Path) -> dict[str, dict]:
    """Scans of the IXI folder: ``{scan_id: {"path", "age", "sex"}}`` (age/sex "n/a" when unknown)."""
    if not ixi_dir.is_dir():
        raise UserError(f"IXI folder {ixi_dir} not found; pass --ixi DIR", EX_NOINPUT)
    tsv = ixi_dir / "participants.tsv"
    if not tsv.is_file():
        raise UserError(f"{tsv} not found; the IXI folder needs participants.tsv (scan_id, age, sex)",
                        EX_NOINPUT)
    with tsv.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or not {"scan_id", "age", "sex"} <= set(rows[0]):
        raise UserError(f"{tsv} must have the columns scan_id, age, sex", EX_DATAERR)
    info = {r["scan_id"]: r for r in rows}
    scans = {}
    for path in sorted(ixi_dir.glob("*" + IMAGE_SUFFIX)):
        scan_id = path.name[: -len(IMAGE_SUFFIX)]
        row = info.get(scan_id, {})
        scans[scan_id] = {
            "path": path,
            "age": _clean(row.get("age")),
            "sex": _clean(row.get("sex")),
        }
    if not scans:
        raise UserError(f"no *{IMAGE_SUFFIX} images in {ixi_dir}", EX_NOINPUT)
    return scans


def _clean(value) -> str:
    value = (value or "").strip()
    return value if value and value.lower() not in ("n/a", "nan") else "n/a"


def bids_labels(scan_ids) -> dict[str, str]:
    """BIDS subject label per scan id: ``IXI012-HH-1211`` -> ``IXI012`` (the whole id made alphanumeric
    if the short form is not unique)."""
    short = {s: (m.group(1) if (m := re.match(r"(IXI\d+)-", s)) else re.sub(r"[^A-Za-z0-9]", "", s))
             for s in scan_ids}
    if len(set(short.values())) == len(short):
        return short
    return {s: re.sub(r"[^A-Za-z0-9]", "", s) for s in scan_ids}


def load_split(path: Path = SPLIT_FILE) -> list[str]:
    """The committed held-out scan ids, in their balanced order."""
    with path.open() as fh:
        return list(json.load(fh)["heldout"])


def choose_heldout(scans: dict[str, dict], seed: int = 0) -> list[str]:
    """The seeded, age/sex-stratified rule that chose ``ixi_split.json`` (see :data:`SPLIT_RULE`)."""
    rng = np.random.default_rng(seed)
    picks = []
    for sex in ("F", "M"):
        known = sorted((float(v["age"]), s) for s, v in scans.items()
                       if v["sex"] == sex and v["age"] != "n/a")
        for age_bin in np.array_split(np.array([s for _, s in known], dtype=object), SPLIT_BINS_PER_SEX):
            chosen = rng.choice(len(age_bin), size=min(SPLIT_PER_BIN, len(age_bin)), replace=False)
            picks.append([age_bin[i] for i in chosen])
    return [b[r] for r in range(SPLIT_PER_BIN) for b in picks if r < len(b)]


def assign_sites(scan_ids, scans: dict[str, dict], sites: list[str], seed: int) -> dict[str, str]:
    """One site per training scan, balanced: scans sorted by (sex, age) are dealt in blocks of
    ``len(sites)``, each block getting a seeded permutation of the sites — so counts differ by at most
    one and sex and age are spread evenly over sites."""
    def key(s):
        age = scans[s]["age"]
        return (scans[s]["sex"], float(age) if age != "n/a" else np.inf, s)

    ordered = sorted(scan_ids, key=key)
    rng = np.random.default_rng([seed, 1])
    out = {}
    for start in range(0, len(ordered), len(sites)):
        block = ordered[start:start + len(sites)]
        perm = rng.permutation(len(sites))
        for scan_id, k in zip(block, perm):
            out[scan_id] = sites[k]
    return out


# --------------------------------------------------------------------------- outputs


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _render(scan: dict, scan_id: str, effect: SiteEffect, seed: int, dest: Path) -> int:
    import nibabel as nib

    try:
        img = nib.load(str(scan["path"]))
        data = img.get_fdata(dtype=np.float32)
    except Exception as exc:  # nibabel raises several types for a broken file
        raise UserError(f"cannot read {scan['path']}: {exc}; replace the file", EX_DATAERR) from exc
    image_seed = derive_seed(seed, scan_id, effect.name)
    out = simulate(data, img.affine, effect, image_seed)
    header = img.header.copy()
    header.set_data_dtype(np.int16)  # nibabel picks scl_slope to keep the float range
    header["descrip"] = f"hcld-bids simulated {effect.name}".encode()[:79]
    new = nib.Nifti1Image(out, img.affine, header)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(new, str(dest))
    return image_seed


def _sidecar(effect: SiteEffect, affine_zooms, image_seed: int, scan_id: str) -> dict:
    slice_mm = effect.slice_thickness_mm or float(affine_zooms[effect.slice_axis])
    return {
        "Manufacturer": "Simulated",
        "ManufacturersModelName": effect.name,
        "MagneticFieldStrength": effect.field_strength,
        "InstitutionName": f"hcld-bids simulated {effect.name}",
        "StationName": effect.name,
        "DeviceSerialNumber": f"SIM-{effect.name}",
        "SliceThickness": slice_mm,
        "SimulationSeed": image_seed,
        "SimulationSource": scan_id,
    }


def _dataset_description(name: str, sites: list[SiteEffect], seed: int) -> dict:
    params = "; ".join(json.dumps(s.to_dict(), separators=(",", ":")) for s in sites)
    return {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": LICENSE,
        "Authors": ["hcld-bids developers (simulation)", "IXI consortium (images)"],
        "Acknowledgements": ACKNOWLEDGEMENTS,
        "HowToAcknowledge": HOW_TO_ACKNOWLEDGE,
        "ReferencesAndLinks": ["https://brain-development.org/ixi-dataset/"],
        "GeneratedBy": [{
            "Name": "hcld-bids scripts/make_ixi_sites.py",
            "Version": __version__,
            "CodeURL": CODE_URL,
            "Description": f"hcld_bids.simulate, base seed {seed}, sites: {params}",
        }],
        "SourceDatasets": [{"URL": "https://brain-development.org/ixi-dataset/",
                            "Version": "IXI HH T1, NiChart 2 mm resampling"}],
    }


def _readme(kind: str, sites: list[SiteEffect], n_subjects: int) -> str:
    lines = [
        f"IXI heads at simulated acquisition sites — {kind}",
        "=" * 60,
        "",
        "Real T1-weighted heads of the IXI dataset (Hammersmith Hospital, Philips 3 T, resampled to",
        "2 mm by the NiChart project) rendered as if acquired at simulated scanner sites by",
        "hcld_bids.simulate (tissue-contrast curve, smooth bias field, Rician noise, blur / slice",
        "thickness, global scale). The anatomy is real; the site differences are simulated.",
        "",
    ]
    if kind == "train":
        lines += [
            f"{n_subjects} subjects, each at exactly one site (column `site` of participants.tsv and",
            "ManufacturersModelName of the sidecar); no subject appears at two sites. Subjects of the",
            "fixed held-out subset (hcld_bids/data/ixi_split.json) are never included.",
        ]
    else:
        lines += [
            f"{n_subjects} held-out subjects (hcld_bids/data/ixi_split.json), each at every site: one",
            "session per site (ses-<site>, column `site` of sub-<label>_sessions.tsv). The unchanged",
            "original scans are in derivatives/original as the clean reference (traveling-subject",
            "ground truth). These subjects never appear in the training set.",
        ]
    lines += [
        "",
        "Reproduce: python scripts/make_ixi_sites.py OUT_ROOT --seed SEED --sites "
        + ",".join(s.name for s in sites) + " (hcld-bids; the seed is in GeneratedBy).",
        "",
        "Sites (full parameters in dataset_description.json, GeneratedBy):",
        "",
    ]
    for s in sites:
        curve = ", ".join(f"{f:.2f}" for _, f in s.curve)
        lines.append(
            f"- {s.name}: curve f({', '.join(f'{u:g}' for u, _ in s.curve)}) = ({curve}); bias "
            f"{s.bias_amplitude:g} over {s.bias_scale_mm:g} mm; noise {s.noise:g} of WM; blur FWHM "
            f"{tuple(s.blur_fwhm_mm)} mm; slices {s.slice_thickness_mm:g} mm; scale {s.scale:g}; "
            f"{s.field_strength:g} T")
    lines += [
        "",
        "License: CC BY-SA 3.0 (share-alike, as the IXI data). Credit: IXI dataset,",
        "https://brain-development.org/ixi-dataset/ ; NiChart 2 mm resampling.",
        "",
    ]
    return "\n".join(lines)


def _participants_json(with_site: bool, sites: list[SiteEffect]) -> dict:
    out = {
        "participant_id": {"Description": "BIDS label made from the IXI scan id"},
        "ixi_scan_id": {"Description": "IXI scan id (IXI<number>-HH-<number>)"},
        "age": {"Description": "age at scan, from IXI", "Units": "year"},
        "sex": {"Description": "sex, from IXI", "Levels": {"F": "female", "M": "male"}},
    }
    if with_site:
        out["site"] = _site_column(sites)
    return out


def _site_column(sites: list[SiteEffect]) -> dict:
    return {"Description": "simulated acquisition site (hcld_bids.simulate.SITES)",
            "Levels": {s.name: f"simulated site {s.name}" for s in sites}}


def _common_files(root: Path, name: str, kind: str, sites, seed: int, n: int) -> None:
    _write_json(root / "dataset_description.json", _dataset_description(name, sites, seed))
    (root / "README").write_text(_readme(kind, sites, n))
    (root / "LICENSE").write_text(
        "CC BY-SA 3.0 — https://creativecommons.org/licenses/by-sa/3.0/\n"
        "Derived from the IXI dataset (https://brain-development.org/ixi-dataset/).\n")


def write_train(root: Path, scans, labels, assignment: dict[str, str], sites, seed: int) -> None:
    by_name = {s.name: s for s in sites}
    rows = []
    for scan_id in sorted(assignment):
        sub = labels[scan_id]
        effect = by_name[assignment[scan_id]]
        nii = root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
        image_seed = _render(scans[scan_id], scan_id, effect, seed, nii)
        _write_json(nii.with_name(f"sub-{sub}_T1w.json"),
                    _sidecar(effect, _world_zooms(scans[scan_id]["path"]), image_seed, scan_id))
        rows.append([f"sub-{sub}", scan_id, effect.name, scans[scan_id]["age"], scans[scan_id]["sex"]])
        _progress()
    _common_files(root, "IXI heads at simulated sites (training set)", "train", sites, seed, len(rows))
    _write_tsv(root / "participants.tsv", ["participant_id", "ixi_scan_id", "site", "age", "sex"], rows)
    _write_json(root / "participants.json", _participants_json(True, sites))


def write_heldout(root: Path, scans, labels, heldout: list[str], sites, seed: int) -> None:
    rows = []
    original = root / "derivatives" / "original"
    for scan_id in sorted(heldout):
        sub = labels[scan_id]
        sessions = []
        for effect in sites:
            anat = root / f"sub-{sub}" / f"ses-{effect.name}" / "anat"
            stem = f"sub-{sub}_ses-{effect.name}_T1w"
            image_seed = _render(scans[scan_id], scan_id, effect, seed, anat / f"{stem}.nii.gz")
            _write_json(anat / f"{stem}.json",
                        _sidecar(effect, _world_zooms(scans[scan_id]["path"]), image_seed, scan_id))
            sessions.append([f"ses-{effect.name}", effect.name])
            _progress()
        _write_tsv(root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", ["session_id", "site"], sessions)
        dest = original / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scans[scan_id]["path"], dest)
        _write_json(dest.with_name(f"sub-{sub}_T1w.json"), {
            "Description": f"IXI {scan_id}, NiChart 2 mm resampling, unchanged (clean reference)",
            "SkullStripped": False,
            "Manufacturer": "Philips",
            "ManufacturersModelName": "Intera",
            "MagneticFieldStrength": 3.0,
            "InstitutionName": "Hammersmith Hospital",
        })
        rows.append([f"sub-{sub}", scan_id, scans[scan_id]["age"], scans[scan_id]["sex"]])
    _common_files(root, "IXI heads at simulated sites (held-out traveling subjects)", "heldout", sites,
                  seed, len(rows))
    _write_tsv(root / "participants.tsv", ["participant_id", "ixi_scan_id", "age", "sex"], rows)
    _write_json(root / "participants.json", _participants_json(False, sites))
    _write_json(root / "sessions.json", {"session_id": {"Description": "one session per simulated site"},
                                         "site": _site_column(sites)})
    (original / "README").write_text(
        "Unchanged IXI images (NiChart 2 mm resampling) of the held-out subjects: the clean reference\n"
        "for the traveling-subject benchmark. Credit: IXI dataset,\n"
        "https://brain-development.org/ixi-dataset/, CC BY-SA 3.0.\n")
    _write_json(original / "dataset_description.json", {
        "Name": "Original IXI scans of the held-out subjects (clean reference)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "License": LICENSE,
        "Authors": ["hcld-bids developers (copy)", "IXI consortium (images)"],
        "Acknowledgements": ACKNOWLEDGEMENTS,
        "GeneratedBy": [{"Name": "hcld-bids scripts/make_ixi_sites.py", "Version": __version__,
                         "CodeURL": CODE_URL,
                         "Description": "unchanged copies of the IXI NiChart 2 mm images"}],
        "SourceDatasets": [{"URL": "https://brain-development.org/ixi-dataset/"}],
    })


def _world_zooms(path: Path):
    """Voxel size along world x, y, z (mm) of an image file."""
    import nibabel as nib

    from hcld_bids.simulate import voxel_axes

    world, zooms = voxel_axes(nib.load(str(path)).affine)
    out = np.empty(3)
    out[world] = zooms
    return out.tolist()


_PROGRESS = {"done": 0, "total": 0}


def _progress() -> None:
    _PROGRESS["done"] += 1
    done, total = _PROGRESS["done"], _PROGRESS["total"]
    if done == total or done % 10 == 0:
        print(f"make_ixi_sites: {done}/{total} images", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- main


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2; the BIDS execution spec says 64 for usage errors
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="make_ixi_sites.py",
        description="IXI heads -> multi-site BIDS training set + held-out traveling subjects.")
    p.add_argument("out_root", nargs="?", type=Path, help="output folder (gets train/ and heldout/)")
    p.add_argument("--ixi", type=Path, default=DEFAULT_IXI, help="IXI folder (default: %(default)s)")
    p.add_argument("--sites", default=",".join(SITES),
                   help="comma-separated simulated sites (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the simulation (default: 0)")
    p.add_argument("--n-train", type=int, default=None,
                   help="number of training subjects (default: every scan not held out)")
    p.add_argument("--n-heldout", type=int, default=None,
                   help="number of held-out subjects, the first M of the fixed split (default: all)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_ROOT")
    p.add_argument("--print-split", action="store_true",
                   help="print the split the documented rule gives for --ixi and exit")
    return p


def run(args) -> int:
    scans = read_ixi(args.ixi)
    if args.print_split:
        print(json.dumps(split_document(scans, args.ixi), indent=2))
        return EX_OK
    if args.out_root is None:
        raise UserError("OUT_ROOT is required (or pass --print-split)", EX_USAGE)

    names = [s.strip() for s in args.sites.split(",") if s.strip()]
    unknown = [s for s in names if s not in SITES]
    if unknown or not names or len(set(names)) != len(names):
        raise UserError(f"--sites {args.sites!r}: choose distinct names among {', '.join(SITES)}",
                        EX_USAGE)
    sites = [SITES[s] for s in names]

    split = load_split()
    heldout_pool = [s for s in split if s in scans]
    n_heldout = len(heldout_pool) if args.n_heldout is None else args.n_heldout
    if not 0 <= n_heldout <= len(heldout_pool):
        raise UserError(f"--n-heldout {n_heldout}: {args.ixi} has {len(heldout_pool)} scans of the "
                        f"held-out split; choose at most that", EX_USAGE)
    heldout = heldout_pool[:n_heldout]

    # Every scan of the split is excluded from training, also those not written to heldout/.
    train_pool = sorted(s for s in scans if s not in set(split))
    n_train = len(train_pool) if args.n_train is None else args.n_train
    if not 0 <= n_train <= len(train_pool):
        raise UserError(f"--n-train {n_train}: only {len(train_pool)} non-held-out scans in "
                        f"{args.ixi}; choose at most that", EX_USAGE)
    rng = np.random.default_rng([args.seed, 0])
    train = sorted(rng.permutation(train_pool)[:n_train].tolist()) if n_train < len(train_pool) \
        else train_pool
    leaked = set(train) & set(split)
    if leaked:  # structural guarantee above; checked again because it must never happen
        raise UserError(f"held-out scans {sorted(leaked)} would enter train; refusing", EX_FAILURE)

    out_root = args.out_root.resolve()
    ixi = args.ixi.resolve()
    if out_root == ixi or ixi in out_root.parents:
        raise UserError(f"OUT_ROOT {out_root} is inside the IXI folder; choose another place", EX_USAGE)
    if out_root.exists() and not args.force:
        raise UserError(f"{out_root} exists; pass --force to replace it", EX_CANTCREAT)
    try:
        out_root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.", suffix=".tmp", dir=out_root.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
    except OSError as exc:
        raise UserError(f"cannot create {out_root}: {exc.strerror}; check the path and permissions",
                        EX_CANTCREAT) from exc

    labels = bids_labels(scans)
    _PROGRESS.update(done=0, total=len(train) + len(heldout) * len(sites))
    try:
        write_train(tmp / "train", scans, labels, assign_sites(train, scans, names, args.seed), sites,
                    args.seed)
        write_heldout(tmp / "heldout", scans, labels, heldout, sites, args.seed)
        _swap_into_place(tmp, out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"make_ixi_sites: wrote {out_root}/train ({len(train)} subjects) and {out_root}/heldout "
          f"({len(heldout)} subjects x {len(sites)} sites)", file=sys.stderr)
    return EX_OK


def _swap_into_place(tmp: Path, out_root: Path) -> None:
    if not out_root.exists():
        os.replace(tmp, out_root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.", suffix=".old", dir=out_root.parent))
    os.replace(out_root, old / "x")
    os.replace(tmp, out_root)
    shutil.rmtree(old, ignore_errors=True)


def split_document(scans: dict[str, dict], ixi_dir: Path, seed: int = 0) -> dict:
    """The JSON content of ``ixi_split.json`` that the rule gives for these scans."""
    return {
        "description": "IXI scans held out from every training set of hcld-bids (traveling-subject "
                       "benchmark); never used in training.",
        "source": f"{ixi_dir.name}/participants.tsv ({len(scans)} scans, IXI Hammersmith Hospital)",
        "rule": SPLIT_RULE,
        "seed": seed,
        "heldout": choose_heldout(scans, seed),
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"make_ixi_sites: error: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"make_ixi_sites: error: cannot write: {exc}; check free space and permissions",
              file=sys.stderr)
        return EX_CANTCREAT


if __name__ == "__main__":
    sys.exit(main())
