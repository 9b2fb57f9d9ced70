"""Robustness matrix: bad inputs end with one line naming the problem, a BIDS exec-spec exit code, no
traceback, nothing written into BIDS_DIR and no partial file under a final name in OUTPUT_DIR.

Each case builds what it needs from a pristine copy of a small multi-site dataset (real scans) and runs the
command line in-process. Checks that need the workflows to run (crashes inside nodes, kills, concurrent
writers) live with the workflow, derivatives and model tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.cli.run import main
from hcld_bids.config import DEMO_MODEL_DIR
from hcld_bids.testing import hash_tree

OK_TARGET = ["--target-site", "siteA"]
FAST = ["--skip-bids-validation", "--nprocs", "1"]


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


def _reference(tmp, data):
    path = tmp / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), path)
    return ["--reference-image", str(path)]


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


# (id, expected exit code, words the message must contain, how to break things)
# "mutate" gets (bids, tmp) and may change the copy of the dataset; it returns (bids_dir, out_dir, extra args).
CASES = [
    ("bids-dir-missing", 66, ["does not exist"], lambda b, t: (t / "nope", t / "out", OK_TARGET)),
    ("bids-dir-is-a-file", 66, [], lambda b, t: ((t / "f").write_text("x") and t / "f", t / "out", OK_TARGET)),
    ("not-bids-validated", 16, ["valid"], lambda b, t: ((b / "dataset_description.json").unlink() or b,
                                                       t / "out", ["--nprocs", "1", *OK_TARGET])),
    ("output-is-bids-dir", 64, ["OUTPUT_DIR"], lambda b, t: (b, b, OK_TARGET)),
    ("output-inside-bids-dir", 64, ["inside"], lambda b, t: (b, b / "derivatives" / "hcld", OK_TARGET)),
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
    ("reference-all-zero", 65, ["ref.nii.gz"], lambda b, t: (b, t / "out", _reference(t, np.zeros((16, 16, 16))))),
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
    ("t1w-all-zero", 65, ["sub-01_T1w.nii.gz"], lambda b, t: (_save(_t1w(b), np.zeros((40, 40, 40), np.float32))
                                                              or b, t / "out", OK_TARGET)),
    ("t1w-nan", 65, ["sub-01_T1w.nii.gz"], lambda b, t: (_save(_t1w(b), np.full((40, 40, 40), np.nan, np.float32))
                                                         or b, t / "out", OK_TARGET)),
    ("t1w-absurd-voxels", 65, ["sub-01_T1w.nii.gz"], lambda b, t: (
        _save(_t1w(b), np.ones((40, 40, 40), np.float32), np.diag([40.0, 40.0, 40.0, 1.0])) or b, t / "out",
        OK_TARGET)),
    ("subject-without-site", 65, ["sub-01"], lambda b, t: (_no_site(b) or b, t / "out", OK_TARGET)),
    ("group-without-outputs", 18, ["participant level"], lambda b, t: (b, t / "empty", ["--level-group"])),
]


@pytest.fixture
def dataset(bids_participants, tmp_path) -> Path:
    copy = tmp_path / "bids"
    shutil.copytree(bids_participants, copy)
    return copy


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_cleanly(case, dataset, tmp_path, capsys):
    name, code, words, mutate = case
    bids, out, extra = mutate(dataset, tmp_path)
    level = "participant"
    if extra == ["--level-group"]:
        level, extra = "group", []
    before = hash_tree(bids) if Path(bids).is_dir() else None
    fast = [a for a in FAST if a != "--skip-bids-validation"] if name == "not-bids-validated" else FAST
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
