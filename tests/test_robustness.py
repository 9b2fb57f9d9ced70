"""Robustness matrix: bad inputs end with one line naming the problem, a BIDS exec-spec exit code, no
traceback, nothing written into BIDS_DIR and no partial file under a final name in OUTPUT_DIR.

Each case builds what it needs from a pristine copy of a small multi-site dataset (real scans) and runs the
command line in-process. Checks that need the workflows to run (crashes inside nodes, kills, concurrent
writers) live with the workflow, derivatives and model tests.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.bids import atomic
from hcld_bids.cli.run import main
from hcld_bids.config import DEMO_MODEL_DIR
from hcld_bids.testing import hash_tree

OK_TARGET = ["--target-site", "siteA"]
FAST = ["--skip-bids-validation", "--nprocs", "1"]
#: A head-sized voxel-to-world affine for small synthetic arrays: 40 voxels of 3 mm span 120 mm.
HEAD_3MM = np.diag([3.0, 3.0, 3.0, 1.0])
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SCANNER_KEYS = ("Manufacturer", "ManufacturersModelName", "InstitutionName", "DeviceSerialNumber", "StationName",
                "MagneticFieldStrength", "InstitutionAddress", "InstitutionalDepartmentName")


def _t1w(bids: Path, sub: str = "01") -> Path:
    return bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"


def _save(path: Path, data, affine=None):
    path.unlink()
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)


def _copy_model(tmp: Path) -> Path:
    dest = tmp / "model"
    shutil.copytree(DEMO_MODEL_DIR, dest)
    return dest


def _corrupt_weights(tmp):
    model = _copy_model(tmp)
    with open(model / "unet.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00" * 16)
    return ["--model", str(model)]


def _bad_manifest_json(tmp):
    model = _copy_model(tmp)
    (model / "manifest.json").write_text("{not json")
    return ["--model", str(model)]


def _manifest_without_weights(tmp):
    model = _copy_model(tmp)
    manifest = json.loads((model / "manifest.json").read_text())
    del manifest["weights"]
    (model / "manifest.json").write_text(json.dumps(manifest))
    return ["--model", str(model)]


def _missing_weight_file(tmp):
    model = _copy_model(tmp)
    (model / "autoencoder.safetensors").unlink()
    return ["--model", str(model)]


def _pickle_instead_of_safetensors(tmp):
    import pickle

    model = _copy_model(tmp)
    (model / "prototypes.safetensors").write_bytes(pickle.dumps({"x": 1}))
    return ["--model", str(model)]


def _future_format(tmp):
    model = _copy_model(tmp)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["format_version"] = 999
    (model / "manifest.json").write_text(json.dumps(manifest))
    return ["--model", str(model)]


def _filter_file(tmp, text):
    path = tmp / "filter.json"
    path.write_text(text)
    return ["--bids-filter-file", str(path)]


def _reference(tmp, data, affine=None):
    path = tmp / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), HEAD_3MM if affine is None else affine), path)
    return ["--reference-image", str(path)]


def _complex_reference(tmp):
    path = tmp / "ref.nii.gz"
    nib.save(nib.Nifti1Image((_noise((64, 64, 64)) * (1 + 1j)).astype(np.complex64), HEAD_3MM), path)
    return ["--reference-image", str(path)]


def _reference_text_file(tmp):
    path = tmp / "ref.txt"
    path.write_text("T1w reference: see the lab wiki\n")
    return ["--reference-image", str(path)]


def _noise(shape):
    return np.random.default_rng(0).uniform(10, 1000, shape).astype(np.float32)


def _edit_manifest(tmp, **preprocessing):
    """A copy of the demo model whose manifest's preprocessing block has ``preprocessing`` changes (the
    bundle's sha256 covers the weight files only, so the copy stays loadable)."""
    model = _copy_model(tmp)
    manifest = json.loads((model / "manifest.json").read_text())
    for key, value in preprocessing.items():
        manifest["preprocessing"][key] = value
    (model / "manifest.json").write_text(json.dumps(manifest))
    return ["--model", str(model)]


def _manifest_block(tmp, block, value):
    """A copy of the demo model whose manifest's top-level ``block`` is ``value``."""
    model = _copy_model(tmp)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest[block] = value
    (model / "manifest.json").write_text(json.dumps(manifest))
    return ["--model", str(model)]


def _short_histogram(tmp):
    model = _copy_model(tmp)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["sites"]["siteA"]["intensity_histogram"]["density"] = [1.0]
    (model / "manifest.json").write_text(json.dumps(manifest))
    return ["--model", str(model)]


def _sidecar_text(bids, text, sub="01"):
    (bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.json").write_text(text)
    return bids


def _database_dir(tmp, content: bytes | None):
    """``--bids-database-dir``: a plain file (``content`` None) or a directory holding a damaged index."""
    path = tmp / "db"
    if content is None:
        path.write_text("not a directory")
    else:
        path.mkdir()
        (path / "layout_index.sqlite").write_bytes(content)
    return ["--bids-database-dir", str(path)]


def _description(bids, text):
    (bids / "dataset_description.json").write_text(text)
    return bids


def _description_without(bids, key):
    desc = json.loads((bids / "dataset_description.json").read_text())
    del desc[key]
    return _description(bids, json.dumps(desc))


def _strip_scanner(bids, subjects=None):
    """Remove the scanner fields from the T1w sidecars (of ``subjects``, default all)."""
    for sidecar in bids.rglob("sub-*_T1w.json"):
        if subjects is None or sidecar.name.split("_")[0][4:] in subjects:
            meta = json.loads(sidecar.read_text())
            for key in SCANNER_KEYS:
                meta.pop(key, None)
            sidecar.write_text(json.dumps(meta))
    return bids


def _drop_sidecar(bids, sub="01"):
    _t1w(bids, sub).with_name(f"sub-{sub}_T1w.json").unlink()
    return bids


def _drop_site_column(bids):
    tsv = bids / "participants.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    col = rows[0].index("site")
    tsv.write_text("\n".join("\t".join(r[:col] + r[col + 1:]) for r in rows) + "\n")
    (bids / "participants.json").unlink(missing_ok=True)
    return bids


def _site_cell(bids, sub, value):
    tsv = bids / "participants.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    col = rows[0].index("site")
    for row in rows[1:]:
        if row[0] == f"sub-{sub}":
            row[col] = value
    tsv.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    return bids


def _read_only(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    return path


def _plugin(tmp, text):
    path = tmp / "plugin.yml"
    path.write_text(text)
    return ["--use-plugin", str(path)]


def _no_site(bids):
    tsv = bids / "participants.tsv"
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    col = header.index("site")
    row = lines[1].split("\t")
    row[col] = "n/a"
    lines[1] = "\t".join(row)
    tsv.write_text("\n".join(lines) + "\n")
    for sidecar in bids.rglob("sub-01*_T1w.json"):
        meta = json.loads(sidecar.read_text())
        for key in ("Manufacturer", "ManufacturersModelName", "InstitutionName", "DeviceSerialNumber",
                    "StationName", "MagneticFieldStrength"):
            meta.pop(key, None)
        sidecar.write_text(json.dumps(meta))


class _FullDiskFile:
    """A file object whose writes stop half-way with ENOSPC, as on a full disk."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, data):
        self._stream.write(data[: len(data) // 2])
        self._stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()
        return False


def _disk_full_for(suffix):
    """Make the project's atomic writer hit a full disk when it writes a file whose name ends with ``suffix``."""
    def patch(monkeypatch):
        def fake_open(file, mode="r", *args, **kwargs):
            stream = builtins.open(file, mode, *args, **kwargs)
            if "w" in mode and str(file).endswith(suffix):
                return _FullDiskFile(stream)
            return stream

        monkeypatch.setattr(atomic, "open", fake_open, raising=False)
    return patch


#: Cases that need more than a changed dataset: id -> function(monkeypatch) run before main().
PATCHES = {
    "disk-full-dataset-description": _disk_full_for("dataset_description.json"),
    "disk-full-run-config": _disk_full_for(".toml"),
}
#: Files that must not exist after the case (no partial file under its final name).
ABSENT = {
    "disk-full-dataset-description": ["dataset_description.json"],
}
#: Cases run with BIDS validation on (the others skip it, which is faster).
VALIDATED = {"not-bids-validated", "description-not-json", "description-no-name", "description-no-bidsversion"}

# (id, expected exit code, words the message must contain, how to break things)
# "mutate" gets (bids, tmp) and may change the copy of the dataset; it returns (bids_dir, out_dir, extra args).
CASES = [
    ("bids-dir-missing", 66, ["does not exist"], lambda b, t: (t / "nope", t / "out", OK_TARGET)),
    ("bids-dir-is-a-file", 66, [], lambda b, t: ((t / "f").write_text("x") and t / "f", t / "out", OK_TARGET)),
    ("not-bids-validated", 16, ["valid"], lambda b, t: ((b / "dataset_description.json").unlink() or b,
                                                       t / "out", ["--nprocs", "1", *OK_TARGET])),
    ("output-is-bids-dir", 64, ["OUTPUT_DIR"], lambda b, t: (b, b, OK_TARGET)),
    ("output-inside-bids-dir", 64, ["inside"], lambda b, t: (b, b / "code" / "hcld", OK_TARGET)),
    ("output-nested-in-derivatives", 64, ["derivatives/<name>"], lambda b, t: (b, b / "derivatives" / "a" / "b",
                                                                              OK_TARGET)),
    ("work-inside-bids-dir", 64, ["work"], lambda b, t: (b, t / "out", [*OK_TARGET, "-w", str(b / "work")])),
    ("output-under-a-file", 73, ["OUTPUT_DIR"], lambda b, t: (b, (t / "file").write_text("x") and t / "file" / "out",
                                                             OK_TARGET)),
    ("unknown-participant", 18, ["99"], lambda b, t: (b, t / "out", [*OK_TARGET, "--participant-label", "99"])),
    ("unknown-session", 18, ["zz"], lambda b, t: (b, t / "out", [*OK_TARGET, "--session-label", "zz"])),
    ("filter-matches-nothing", 18, [], lambda b, t: (b, t / "out", [*OK_TARGET, *_filter_file(
        t, '{"t1w": {"acquisition": "nonexistent"}}')])),
    ("filter-file-missing", 66, ["filter"], lambda b, t: (b, t / "out", [*OK_TARGET, "--bids-filter-file",
                                                                         str(t / "missing.json")])),
    ("filter-file-bad-json", 64, ["filter"], lambda b, t: (b, t / "out", [*OK_TARGET, *_filter_file(t, "{oops")])),
    ("no-target", 64, ["--target-site"], lambda b, t: (b, t / "out", [])),
    ("unknown-target-site", 64, ["unknown --target-site"], lambda b, t: (b, t / "out", ["--target-site", "mars"])),
    ("target-and-reference", 64, [], lambda b, t: (b, t / "out", [*OK_TARGET, "--reference-image", str(_t1w(b))])),
    ("reference-missing", 66, ["reference"], lambda b, t: (b, t / "out", ["--reference-image", str(t / "r.nii.gz")])),
    ("reference-4d", 65, ["ref.nii.gz"], lambda b, t: (b, t / "out", _reference(t, np.ones((8, 8, 8, 3))))),
    ("reference-all-zero", 65, ["ref.nii.gz"], lambda b, t: (b, t / "out", _reference(t, np.zeros((40, 40, 40))))),
    ("model-missing", 66, ["model"], lambda b, t: (b, t / "out", [*OK_TARGET, "--model", str(t / "nomodel")])),
    ("model-without-manifest", 66, ["manifest"], lambda b, t: (b, t / "out", [*OK_TARGET, "--model",
                                                                              str((t / "m").mkdir() or t / "m")])),
    ("model-weights-corrupted", 65, ["sha256"], lambda b, t: (b, t / "out", [*OK_TARGET, *_corrupt_weights(t)])),
    ("model-manifest-not-json", 65, ["manifest"], lambda b, t: (b, t / "out", [*OK_TARGET, *_bad_manifest_json(t)])),
    ("model-manifest-no-hashes", 65, ["weights"], lambda b, t: (b, t / "out", [*OK_TARGET,
                                                                               *_manifest_without_weights(t)])),
    ("model-weight-file-missing", 66, ["autoencoder"], lambda b, t: (b, t / "out", [*OK_TARGET,
                                                                                    *_missing_weight_file(t)])),
    ("model-pickle-payload", 65, ["prototypes"], lambda b, t: (b, t / "out", [*OK_TARGET,
                                                                              *_pickle_instead_of_safetensors(t)])),
    ("model-future-format", 65, ["format"], lambda b, t: (b, t / "out", [*OK_TARGET, *_future_format(t)])),
    ("cuda-without-gpu", 64, ["--device"], lambda b, t: (b, t / "out", [*OK_TARGET, "--device", "cuda"])),
    ("memory-too-small", 64, ["--mem"], lambda b, t: (b, t / "out", [*OK_TARGET, "--mem", "0.01"])),
    ("unknown-output-space", 64, ["--output-spaces"], lambda b, t: (b, t / "out", [*OK_TARGET, "--output-spaces",
                                                                                   "MNI152NLin2009cAsym"])),
    ("nprocs-zero", 64, ["--nprocs"], lambda b, t: (b, t / "out", [*OK_TARGET, "--nprocs", "0"])),
    ("ddim-steps-zero", 64, ["--ddim-inversion-steps"], lambda b, t: (b, t / "out", [*OK_TARGET,
                                                                                     "--ddim-inversion-steps", "0"])),
    ("plugin-file-missing", 66, ["plugin"], lambda b, t: (b, t / "out", [*OK_TARGET, "--use-plugin",
                                                                         str(t / "p.yml")])),
    ("plugin-file-not-yaml-mapping", 64, ["plugin"], lambda b, t: (b, t / "out", [*OK_TARGET,
                                                                                  *_plugin(t, "- just\n- a list\n")])),
    ("t1w-not-nifti", 65, ["sub-01_T1w.nii.gz"], lambda b, t: (_t1w(b).write_bytes(b"garbage") and b, t / "out",
                                                               OK_TARGET)),
    ("t1w-truncated", 65, ["sub-01_T1w.nii.gz"], lambda b, t: (_t1w(b).write_bytes(_t1w(b).read_bytes()[:5000]) and b,
                                                               t / "out", OK_TARGET)),
    ("t1w-4d", 65, ["sub-01_T1w.nii.gz"], lambda b, t: (_save(_t1w(b), np.ones((20, 20, 20, 2), np.float32)) or b,
                                                        t / "out", OK_TARGET)),
    ("t1w-all-zero", 65, ["sub-01_T1w.nii.gz", "empty"], lambda b, t: (
        _save(_t1w(b), np.zeros((40, 40, 40), np.float32), HEAD_3MM) or b, t / "out", OK_TARGET)),
    ("t1w-nan", 65, ["sub-01_T1w.nii.gz", "NaN"], lambda b, t: (
        _save(_t1w(b), np.full((40, 40, 40), np.nan, np.float32), HEAD_3MM) or b, t / "out", OK_TARGET)),
    ("t1w-absurd-voxels", 65, ["sub-01_T1w.nii.gz"], lambda b, t: (
        _save(_t1w(b), np.ones((40, 40, 40), np.float32), np.diag([40.0, 40.0, 40.0, 1.0])) or b, t / "out",
        OK_TARGET)),
    ("subject-without-site", 65, ["sub-01"], lambda b, t: (_no_site(b) or b, t / "out", OK_TARGET)),
    ("group-without-outputs", 18, ["participant level"], lambda b, t: (b, t / "empty", ["--level-group"])),
    # --- issue 9, item 1 ---
    ("t1w-2d", 65, ["sub-01_T1w.nii.gz", "2D"], lambda b, t: (_save(_t1w(b), _noise((64, 64)), HEAD_3MM) or b,
                                                              t / "out", OK_TARGET)),
    ("t1w-single-slice", 65, ["sub-01_T1w.nii.gz", "2D"], lambda b, t: (
        _save(_t1w(b), _noise((64, 64, 1)), HEAD_3MM) or b, t / "out", OK_TARGET)),
    ("t1w-tiny-fov", 65, ["sub-01_T1w.nii.gz", "(10, 10, 10)", "at least 16 voxels"], lambda b, t: (
        _save(_t1w(b), _noise((10, 10, 10))) or b, t / "out", OK_TARGET)),
    ("t1w-fov-smaller-than-a-brain", 65, ["sub-01_T1w.nii.gz", "64 x 64 x 64 mm", "at least 80 mm"], lambda b, t: (
        _save(_t1w(b), _noise((64, 64, 64))) or b, t / "out", OK_TARGET)),
    ("t1w-slab", 65, ["sub-01_T1w.nii.gz", "48 mm", "whole-head"], lambda b, t: (
        _save(_t1w(b), _noise((64, 64, 16)), HEAD_3MM) or b, t / "out", OK_TARGET)),
    ("no-sidecar-and-no-site-column", 65, ["sub-01_T1w.nii.gz", "no JSON sidecar", "participants.tsv",
                                           "no 'site' column", "--site-column"], lambda b, t: (
        _drop_site_column(_drop_sidecar(b)), t / "out", OK_TARGET)),
    ("no-site-column-no-scanner-fields", 65, ["participants.tsv", "no 'site' column", "--site-column",
                                              "sub-01_T1w.nii.gz"], lambda b, t: (
        _strip_scanner(_drop_site_column(b)), t / "out", OK_TARGET)),
    ("site-cell-blank", 65, ["sub-02", "participants.tsv", "empty", "fill in"], lambda b, t: (
        _strip_scanner(_site_cell(b, "02", ""), ["02"]), t / "out", OK_TARGET)),
    ("site-cells-blank-and-na", 65, ["sub-01", "sub-03", "participants.tsv"], lambda b, t: (
        _strip_scanner(_site_cell(_site_cell(b, "01", "n/a"), "03", "")), t / "out", OK_TARGET)),
    ("site-column-unknown", 64, ["--site-column", "'center'", "participants.tsv"], lambda b, t: (
        b, t / "out", [*OK_TARGET, "--site-column", "center"])),
    ("description-not-json-skipped-validation", 16, ["dataset_description.json", "not valid JSON", "line 1"],
     lambda b, t: (_description(b, '{"Name": "x",'), t / "out", OK_TARGET)),
    ("description-not-an-object-skipped-validation", 16, ["dataset_description.json", "not an object"],
     lambda b, t: (_description(b, '["Name", "BIDSVersion"]'), t / "out", OK_TARGET)),
    ("description-not-json", 16, ["dataset_description.json", "not valid JSON"],
     lambda b, t: (_description(b, "Name: x\n"), t / "out", OK_TARGET)),
    ("description-no-name", 16, ["dataset_description.json", "Name", "--skip-bids-validation"],
     lambda b, t: (_description_without(b, "Name"), t / "out", OK_TARGET)),
    ("description-no-bidsversion", 16, ["dataset_description.json", "BIDSVersion"],
     lambda b, t: (_description_without(b, "BIDSVersion"), t / "out", OK_TARGET)),
    ("reference-2d", 65, ["--reference-image", "ref.nii.gz", "2D"], lambda b, t: (
        b, t / "out", _reference(t, _noise((64, 64))))),
    ("reference-tiny", 65, ["--reference-image", "ref.nii.gz", "at least 80 mm"], lambda b, t: (
        b, t / "out", _reference(t, _noise((40, 40, 40)), np.eye(4)))),
    ("reference-not-nifti", 65, ["--reference-image", "ref.txt", "NIfTI"], lambda b, t: (
        b, t / "out", _reference_text_file(t))),
    pytest.param(("output-dir-read-only", 73, ["OUTPUT_DIR", "writable"], lambda b, t: (
        b, _read_only(t / "ro"), OK_TARGET)), marks=pytest.mark.skipif(IS_ROOT, reason="root ignores permissions"),
        id="output-dir-read-only"),
    pytest.param(("output-parent-read-only", 73, ["OUTPUT_DIR", "writable"], lambda b, t: (
        b, _read_only(t / "ro") / "out", OK_TARGET)), marks=pytest.mark.skipif(IS_ROOT, reason="root ignores "
                                                                                "permissions"),
        id="output-parent-read-only"),
    ("model-template-unknown", 65, ["manifest.json", "'MNI305Lin'", "TemplateFlow", "MNI152NLin6Asym"],
     lambda b, t: (b, t / "out", [*OK_TARGET, *_edit_manifest(t, template="MNI305Lin")])),
    ("model-resolution-unknown", 65, ["manifest.json", "resolution 9", "MNI152NLin6Asym"],
     lambda b, t: (b, t / "out", [*OK_TARGET, *_edit_manifest(t, resolution=9)])),
    ("model-other-resolution", 65, ["manifest.json", "grid"],
     lambda b, t: (b, t / "out", [*OK_TARGET, *_edit_manifest(t, resolution=1)])),
    ("model-other-grid", 65, ["manifest.json", "grid.start"],
     lambda b, t: (b, t / "out", [*OK_TARGET, *_edit_manifest(t, grid={"shape": [80, 96, 80], "start": [0, 0, 0]})])),
    ("model-other-grid-shape", 65, ["manifest.json", "grid.shape"],
     lambda b, t: (b, t / "out", [*OK_TARGET, *_edit_manifest(t, grid={"shape": [96, 96, 96], "start": [6, 8, 0]})])),
    ("model-template-not-installed", 66, ["MNI152NLin2009cAsym", "fetch_templates"],
     lambda b, t: (b, t / "out", [*OK_TARGET, *_edit_manifest(t, template="MNI152NLin2009cAsym")])),
    ("disk-full-dataset-description", 73, ["dataset_description.json", "disk is full"],
     lambda b, t: (b, t / "out", OK_TARGET)),
    ("disk-full-run-config", 73, [".toml", "disk is full"], lambda b, t: (b, t / "out", OK_TARGET)),
    # --- found by a sweep of the error paths (2026-12-07) ---
    ("target-site-empty", 64, ["--target-site", "empty site name"], lambda b, t: (b, t / "out",
                                                                                  ["--target-site", ""])),
    ("random-seed-too-large", 64, ["--random-seed", "4294967295"], lambda b, t: (b, t / "out", [
        *OK_TARGET, "--random-seed", str(10 ** 20)])),
    ("sidecar-not-json-skipped-validation", 16, ["sub-01_T1w.json", "not valid JSON"], lambda b, t: (
        _sidecar_text(b, '{"Manufacturer": '), t / "out", [*OK_TARGET, "--participant-label", "02"])),
    ("filter-unknown-entity", 64, ["--bids-filter-file", "nonexistent_entity"], lambda b, t: (b, t / "out", [
        *OK_TARGET, *_filter_file(t, '{"t1w": {"nonexistent_entity": "x"}}')])),
    ("plugin-unknown", 64, ["--use-plugin", "'Nonexistent'", "MultiProc"], lambda b, t: (b, t / "out", [
        *OK_TARGET, *_plugin(t, "plugin: Nonexistent\n")])),
    ("database-dir-is-a-file", 64, ["--bids-database-dir", "is a file"], lambda b, t: (b, t / "out", [
        *OK_TARGET, *_database_dir(t, None)])),
    ("database-dir-damaged-index", 64, ["--bids-database-dir", "damaged"], lambda b, t: (b, t / "out", [
        *OK_TARGET, *_database_dir(t, b"garbage, not SQLite" * 100)])),
    ("model-autoencoder-block-null", 65, ["manifest.json", "'autoencoder'"], lambda b, t: (b, t / "out", [
        *OK_TARGET, *_manifest_block(t, "autoencoder", None)])),
    ("model-sites-block-a-list", 65, ["manifest.json", "'sites'"], lambda b, t: (b, t / "out", [
        *OK_TARGET, *_manifest_block(t, "sites", ["siteA"])])),
    ("reference-is-a-directory", 65, ["--reference-image", "directory"], lambda b, t: (b, t / "out", [
        "--reference-image", str((t / "refdir").mkdir() or t / "refdir")])),
    ("reference-complex", 65, ["--reference-image", "ref.nii.gz", "complex"], lambda b, t: (b, t / "out",
                                                                                           _complex_reference(t))),
    ("model-histogram-too-short", 65, ["manifest.json", "'siteA'", "histogram"], lambda b, t: (b, t / "out", [
        *OK_TARGET, *_short_histogram(t)])),
]


@pytest.fixture
def dataset(bids_participants, tmp_path) -> Path:
    copy = tmp_path / "bids"
    shutil.copytree(bids_participants, copy)
    return copy


def _case_id(case):
    return case[0] if type(case) is tuple else case.values[0][0]


def test_the_matrix_has_at_least_55_distinct_cases():
    ids = [_case_id(c) for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 55


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) if type(c) is tuple else c for c in CASES])
def test_bad_input_ends_cleanly(case, dataset, tmp_path, capsys, monkeypatch):
    name, code, words, mutate = case
    bids, out, extra = mutate(dataset, tmp_path)
    level = "participant"
    if extra == ["--level-group"]:
        level, extra = "group", []
    before = hash_tree(bids) if Path(bids).is_dir() else None
    if name in PATCHES:
        PATCHES[name](monkeypatch)
    fast = [a for a in FAST if a != "--skip-bids-validation"] if name in VALIDATED else FAST
    args = [str(bids), str(out), level, "-w", str(tmp_path / "work"), *fast, *extra]
    if "-w" in extra:
        args = [str(bids), str(out), level, *fast, *extra]
    assert main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("hcld-bids: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    for word in words:
        assert word in errors[0], errors[0]
    if before is not None:
        assert hash_tree(bids) == before  # nothing written into BIDS_DIR
    if Path(out).is_dir() and not Path(out).is_relative_to(bids):  # nothing half-written under a final name
        assert not [p for p in Path(out).rglob("*") if p.is_file() and (".tmp" in p.name or p.name.startswith("."))
                    and p.name != ".bidsignore"]
        assert not list(Path(out).glob("sub-*/anat/*"))
        for absent in ABSENT.get(name, []):
            assert not (Path(out) / absent).exists()


# --- inputs that look odd but are valid: accepted, not errors (not counted in the matrix) ---

def _collect(bids: Path, tmp: Path, *extra):
    """Parse, check and collect the T1w images of ``bids`` as a participant run would (no workflow)."""
    from hcld_bids.cli.parser import build_parser
    from hcld_bids.cli.run import build_config, collect_inputs, prepare_directories

    config = build_config(build_parser().parse_args(
        [str(bids), str(tmp / "out"), "participant", "-w", str(tmp / "work"), *FAST, *OK_TARGET, *extra]))
    prepare_directories(config)
    return collect_inputs(config)


def _oblique(img: nib.Nifti1Image, degrees=(15.0, 0.0, 10.0)) -> nib.Nifti1Image:
    """The same voxels with the head turned in world space: an oblique voxel-to-world affine (as scanners
    write for slices tilted to the AC-PC line); rotation about the image centre."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    centre = img.affine @ np.r_[(np.asarray(img.shape[:3]) - 1) / 2.0, 1.0]
    turn = np.eye(4)
    turn[:3, :3] = rz @ ry @ rx
    turn[:3, 3] = centre[:3] - turn[:3, :3] @ centre[:3]
    return nib.Nifti1Image(np.asarray(img.dataobj), turn @ img.affine, img.header)


@pytest.fixture
def oblique_dataset(dataset) -> Path:
    path = _t1w(dataset)
    oblique = _oblique(nib.load(path))
    path.unlink()
    nib.save(oblique, path)
    assert not np.allclose(np.abs(oblique.affine[:3, :3]) > 1e-3, np.eye(3, dtype=bool))  # really oblique
    return dataset


def test_oblique_t1w_passes_the_input_checks_and_the_first_preprocessing_step(oblique_dataset, tmp_path):
    from hcld_bids.interfaces.preproc import ValidateT1w
    from hcld_bids.levels.execution import check_t1w_images

    records = _collect(oblique_dataset, tmp_path)
    assert [r.subject for r in records] == ["01", "02", "03"]
    check_t1w_images(records)  # what run_participant/run_train do before any workflow: no error

    source = nib.load(_t1w(oblique_dataset))
    work = tmp_path / "validate"
    work.mkdir()
    result = ValidateT1w(in_file=str(_t1w(oblique_dataset))).run(cwd=str(work))
    ras = nib.load(result.outputs.out_file)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    # reorientation only permutes/flips axes: the same voxels at the same places in the world, still oblique
    data_in, data_out = np.asarray(source.dataobj), np.asarray(ras.dataobj)
    assert sorted(data_in.shape) == sorted(data_out.shape) and data_in.sum() == data_out.sum()
    peak_in = np.unravel_index(np.argmax(data_in), data_in.shape)
    peak_out = np.unravel_index(np.argmax(data_out), data_out.shape)
    np.testing.assert_allclose(source.affine @ np.r_[peak_in, 1], ras.affine @ np.r_[peak_out, 1], atol=1e-3)
    np.testing.assert_allclose(abs(np.linalg.det(ras.affine)), abs(np.linalg.det(source.affine)), rtol=1e-6)


@pytest.mark.slow
def test_registration_of_an_oblique_t1w_matches_that_of_the_straight_one(dataset, tmp_path):
    """Two affine registrations (~10 s): the oblique copy lands where the straight scan lands."""
    from hcld_bids.preproc.registration import register_to_template
    from hcld_bids.preproc.validate import load_t1w
    from hcld_bids.templates import check_templates

    files = check_templates("MNI152NLin6Asym", 2)
    template, mask = nib.load(files["T1w"]), np.asarray(nib.load(files["brain_mask"]).dataobj) > 0
    straight = load_t1w(_t1w(dataset))
    oblique_path = tmp_path / "oblique.nii.gz"
    nib.save(_oblique(nib.load(_t1w(dataset))), oblique_path)
    oblique = load_t1w(oblique_path)
    warped = [np.asarray(register_to_template(img, template, tmp_path / name).warped.dataobj, dtype=float)
              for name, img in (("straight", straight), ("oblique", oblique))]
    assert np.corrcoef(warped[0][mask], warped[1][mask])[0, 1] > 0.9


def test_t1w_without_sidecar_is_accepted_when_participants_tsv_has_its_site(dataset, tmp_path):
    _drop_sidecar(dataset)
    records = {r.subject: r for r in _collect(dataset, tmp_path)}
    assert sorted(records) == ["01", "02", "03"]
    assert records["01"].metadata == {}
    assert (records["01"].site, records["01"].site_source) == ("philips", "participants.tsv")


def test_empty_site_cell_falls_back_to_the_scanner_of_the_sidecar_with_a_warning(dataset, tmp_path, caplog):
    _site_cell(dataset, "01", "")
    records = {r.subject: r for r in _collect(dataset, tmp_path)}
    assert records["01"].site_source == "scanner" and records["01"].site.startswith("Philips")
    assert records["02"].site == "siemens" and records["02"].site_source == "participants.tsv"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "sub-01" in r.getMessage()]
    assert len(warnings) == 1 and "participants.tsv" in warnings[0] and records["01"].site in warnings[0]
    assert "sub-02" not in warnings[0]


@pytest.mark.parametrize("field", ["Name", "BIDSVersion"])
def test_skipped_validation_lets_a_description_without_a_required_field_through_with_a_warning(
        dataset, tmp_path, caplog, field):
    _description_without(dataset, field)
    assert len(_collect(dataset, tmp_path)) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("dataset_description.json" in w and field in w and "--skip-bids-validation" in w for w in warnings)


# --- the group level with half-finished participants (synthetic participant outputs, no model) ---

@pytest.fixture(scope="module")
def half_finished(tmp_path_factory, bids_participants):
    """OUTPUT_DIR with four complete participants (two sites) and four half-finished ones:

    sub-05 harmonized image without its sidecar; sub-06 sidecars without any image; sub-07 preprocessed
    only; sub-08 only a hidden staging file of a killed write. Returns (OUTPUT_DIR, BIDS_DIR)."""
    from hcld_bids.reports.synthetic import ImageSpec, build_output_dir

    scans = Path(__file__).parents[1] / "hcld_bids" / "data" / "t1w"
    norm, uih = scans / "siemens_prismafit3T_xa30_s6_norm.nii.gz", scans / "uih_umr770_3T_run1_2mm.nii.gz"
    specs = [ImageSpec("01", norm, "siteA", seed=1), ImageSpec("02", norm, "siteA", seed=2),
             ImageSpec("03", uih, "siteB", seed=3), ImageSpec("04", uih, "siteB", seed=4),
             ImageSpec("05", uih, "siteB", seed=5), ImageSpec("06", norm, "siteA", seed=6),
             ImageSpec("07", uih, "siteB", seed=7, harmonized=False)]
    out = build_output_dir(tmp_path_factory.mktemp("half") / "out", specs, "siteA", bids_participants)
    stem = "space-MNI152NLin6Asym_res-2"
    (out / "sub-05" / "anat" / f"sub-05_{stem}_desc-harmonized_T1w.json").unlink()
    for image in (out / "sub-06" / "anat").glob("*.nii.gz"):
        image.unlink()
    (out / "sub-08" / "anat").mkdir(parents=True)
    (out / "sub-08" / "anat" / f".tmp-0123456789ab-sub-08_{stem}_desc-harmonized_T1w.nii.gz").write_bytes(b"\x1f")
    return out, bids_participants


def test_group_level_skips_half_finished_participants_with_a_warning_and_lists_them(half_finished, tmp_path,
                                                                                     capsys):
    import pandas as pd

    out = Path(shutil.copytree(half_finished[0], tmp_path / "out"))
    before = hash_tree(half_finished[1])
    code = main([str(half_finished[1]), str(out), "group", "-w", str(tmp_path / "work"), *FAST])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err and "error:" not in err
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    for sub, problem in (("05", "missing-sidecar"), ("06", "missing-harmonized"), ("07", "missing-harmonized"),
                         ("08", "leftover")):
        assert any(f"sub-{sub}" in w and problem in w for w in warnings), (sub, warnings)
    table = pd.read_csv(out / "group_T1w.tsv", sep="\t", dtype=str, keep_default_na=False)
    flags = dict(zip(table["participant_id"], table["flags"]))
    assert sorted(flags) == [f"sub-0{i}" for i in range(1, 8)]  # sub-08 has no output at all: no row
    for sub in ("01", "02", "03", "04"):
        assert not {"missing-sidecar", "missing-harmonized", "missing-preproc", "missing-mask"} & set(
            flags[f"sub-{sub}"].split(";"))
    assert "missing-sidecar" in flags["sub-05"]
    assert {"missing-harmonized", "missing-preproc", "missing-mask"} <= set(flags["sub-06"].split(";"))
    assert "missing-harmonized" in flags["sub-07"]
    rows = table.set_index("participant_id")
    assert rows.loc["sub-06", "image"].endswith("_desc-harmonized_T1w.json")
    assert rows.loc["sub-06", "wasserstein_after"] == "n/a"
    assert (out / "group_report.html").is_file()
    assert hash_tree(half_finished[1]) == before


@pytest.mark.parametrize("text", ["[1, 2]", '{"HCLD": ', '{"HCLD": [1], "QC": "x"}'], ids=["list", "cut", "odd-blocks"])
def test_group_level_names_a_damaged_sidecar_and_goes_on(half_finished, tmp_path, capsys, text):
    out = Path(shutil.copytree(half_finished[0], tmp_path / "out"))
    sidecar = out / "sub-02" / "anat" / "sub-02_space-MNI152NLin6Asym_res-2_desc-harmonized_T1w.json"
    sidecar.write_text(text)
    code = main([str(half_finished[1]), str(out), "group", "-w", str(tmp_path / "work"), *FAST])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err and "error:" not in err
    if text.startswith("{\"HCLD\": ["):  # a JSON object whose blocks have other types: read as absent
        assert any("sub-02" in w and "missing-qc" in w for w in err.splitlines()), err
    else:
        assert any(sidecar.relative_to(out).as_posix() in w and "missing-sidecar" in w and "participant level" in w
                   for w in err.splitlines()), err
    assert (out / "group_report.html").is_file()


def test_group_level_on_a_full_disk_ends_with_73_and_leaves_no_partial_table(half_finished, tmp_path, capsys,
                                                                           monkeypatch):
    out = Path(shutil.copytree(half_finished[0], tmp_path / "out"))
    _disk_full_for("group_T1w.tsv")(monkeypatch)
    code = main([str(half_finished[1]), str(out), "group", "-w", str(tmp_path / "work"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("hcld-bids: error:")]
    assert code == 73 and len(errors) == 1, err
    assert f"{out / 'group_T1w.tsv'}" in errors[0] and "disk is full" in errors[0]
    assert not (out / "group_T1w.tsv").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(atomic.TMP_PREFIX)]


class _CrashingWorkflow:
    """Stands in for a nipype workflow whose node crashed, leaving a crash file with ``last_line``."""

    def __init__(self, crash_dir: Path, last_line: str):
        self.config = {}
        self.crash_dir, self.last_line = crash_dir, last_line

    def run(self, **_):
        self.crash_dir.mkdir(parents=True)
        (self.crash_dir / "crash-ds_harmonized.txt").write_text(
            "Node: hcld_bids_wf.sub_01_wf.t1w_wf.outputs_wf.ds_harmonized\nTraceback (most recent call last):\n"
            f'  File "sink.py", line 1, in _run_interface\n{self.last_line}\n')
        raise RuntimeError("Workflow did not execute cleanly. Check log for details")


@pytest.mark.parametrize("last_line, code", [
    ("OSError: [Errno 28] No space left on device", 73),
    ("OSError: [Errno 122] Disk quota exceeded", 73),
    ("ValueError: something else", 1),
])
def test_a_node_that_hits_a_full_disk_ends_the_run_with_73(dataset, tmp_path, last_line, code):
    from hcld_bids.cli.parser import build_parser
    from hcld_bids.cli.run import build_config
    from hcld_bids.errors import HCLDError
    from hcld_bids.levels.execution import run_workflow

    config = build_config(build_parser().parse_args(
        [str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), *FAST, *OK_TARGET]))
    crash_dir = config.execution.output_dir / "sub-01" / "log" / config.execution.run_uuid
    with pytest.raises(HCLDError) as info:
        run_workflow(_CrashingWorkflow(crash_dir, last_line), config)
    assert info.value.exit_code == code
    assert str(crash_dir / "crash-ds_harmonized.txt") in info.value.message
    assert ("disk is full" in info.value.message) == (code == 73)


@pytest.mark.slow
def test_an_image_that_is_not_a_head_is_harmonized_but_fails_qc(dataset, tmp_path, capsys):
    """Noise given as a T1w passes the input checks (3D, finite, not constant, head-sized): the run goes on,
    and the QC says the input is unlike a brain where the template has one."""
    t1w = _t1w(dataset)
    img = nib.load(t1w)
    noise = np.random.default_rng(0).random(img.shape).astype(np.float32) * 1000
    nib.save(nib.Nifti1Image(noise, img.affine, img.header), t1w)
    out = tmp_path / "out"
    code = main([str(dataset), str(out), "participant", "-w", str(tmp_path / "work"), *FAST, *OK_TARGET,
                 "--participant-label", "01", "--sloppy"])
    err = capsys.readouterr().err
    assert code == 0, err
    sidecar = next(out.glob("sub-01/anat/*res-2_desc-harmonized_T1w.json"))
    qc = json.loads(sidecar.read_text())["QC"]
    assert qc["TemplateSimilarity"] < 0.05 and "unlike-a-brain" in qc["Flags"]
    assert "QC FAILED for sub-01_T1w: unlike-a-brain" in err
