"""End-to-end and unit tests of scripts/make_ixi_sites.py on a fake IXI folder made of the 3 mm test scans."""

import csv
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.simulate import SITES, derive_seed, simulate

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "hcld_bids" / "data" / "t1w"
SPLIT = REPO / "hcld_bids" / "data" / "ixi_split.json"
SITE_NAMES = ["siteA", "siteB", "siteC"]


def _load_script():
    spec = importlib.util.spec_from_file_location("make_ixi_sites", REPO / "scripts" / "make_ixi_sites.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mk = _load_script()
HELDOUT_IDS = json.loads(SPLIT.read_text())["heldout"][:2]
TRAIN_IDS = ["IXI900-HH-9001", "IXI901-HH-9002", "IXI902-HH-9003"]


def _read_tsv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _validator():
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent / "bids-validator-deno")
    assert Path(exe).exists(), "bids-validator-deno (pip package bids-validator-deno) is required"
    return exe


@pytest.fixture(scope="module")
def fake_ixi(tmp_path_factory):
    """Five real 3 mm heads named as IXI scans: two of the held-out split, three others."""
    root = tmp_path_factory.mktemp("ixi")
    ids = HELDOUT_IDS + TRAIN_IDS
    rows = ["scan_id\tage\tsex"]
    for k, (scan_id, src) in enumerate(zip(ids, sorted(DATA.glob("*.nii.gz")))):
        shutil.copyfile(src, root / f"{scan_id}_T1_2mm.nii.gz")
        rows.append(f"{scan_id}\t{30 + 7 * k:.2f}\t{'FM'[k % 2]}" if k != 4 else f"{scan_id}\tn/a\tn/a")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def generated(fake_ixi, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "ixi-sites"
    rc = mk.main([str(out), "--ixi", str(fake_ixi), "--sites", ",".join(SITE_NAMES), "--seed", "0"])
    assert rc == 0
    return out


# ---------------------------------------------------------------- end to end


def test_train_has_every_non_heldout_subject_at_exactly_one_balanced_site(generated):
    rows = _read_tsv(generated / "train" / "participants.tsv")
    assert list(rows[0]) == ["participant_id", "ixi_scan_id", "site", "age", "sex"]
    assert sorted(r["ixi_scan_id"] for r in rows) == TRAIN_IDS
    assert sorted(r["site"] for r in rows) == SITE_NAMES  # 3 subjects, 3 sites: one each
    for r in rows:
        sub = r["participant_id"]
        assert re.fullmatch(r"sub-[A-Za-z0-9]+", sub)
        assert [p.name for p in (generated / "train" / sub).iterdir()] == ["anat"]
    assert {r["age"] for r in rows if r["ixi_scan_id"] == TRAIN_IDS[2]} == {"n/a"}


def test_no_heldout_subject_is_in_train(generated):
    train_scans = {r["ixi_scan_id"] for r in _read_tsv(generated / "train" / "participants.tsv")}
    assert not train_scans & set(json.loads(SPLIT.read_text())["heldout"])
    subjects = {p.name for p in (generated / "train").glob("sub-*")}
    assert not subjects & {f"sub-{mk.bids_labels([s])[s]}" for s in HELDOUT_IDS}


def test_heldout_subjects_have_one_session_per_site_and_the_original(generated, fake_ixi):
    root = generated / "heldout"
    rows = _read_tsv(root / "participants.tsv")
    assert sorted(r["ixi_scan_id"] for r in rows) == sorted(HELDOUT_IDS)
    assert "site" not in rows[0]
    for r in rows:
        sub = r["participant_id"]
        sessions = _read_tsv(root / sub / f"{sub}_sessions.tsv")
        assert [(s["session_id"], s["site"]) for s in sessions] == [(f"ses-{n}", n) for n in SITE_NAMES]
        for name in SITE_NAMES:
            assert (root / sub / f"ses-{name}" / "anat" / f"{sub}_ses-{name}_T1w.nii.gz").is_file()
        original = root / "derivatives" / "original" / sub / "anat" / f"{sub}_T1w.nii.gz"
        assert original.read_bytes() == (fake_ixi / f"{r['ixi_scan_id']}_T1_2mm.nii.gz").read_bytes()


def test_images_are_the_simulator_output_for_the_subject_and_site_seed(generated, fake_ixi):
    rows = _read_tsv(generated / "train" / "participants.tsv")
    r = rows[0]
    src = nib.load(str(fake_ixi / f"{r['ixi_scan_id']}_T1_2mm.nii.gz"))
    expected = simulate(src.get_fdata(dtype=np.float32), src.affine, SITES[r["site"]],
                        derive_seed(0, r["ixi_scan_id"], r["site"]))
    sub = r["participant_id"]
    img = nib.load(str(generated / "train" / sub / "anat" / f"{sub}_T1w.nii.gz"))
    assert np.allclose(img.affine, src.affine)
    # Stored as int16 with a scale factor: equal up to half a quantisation step.
    assert np.abs(img.get_fdata() - expected).max() <= img.dataobj.slope * 0.51 + 1e-3

    # The same (subject, site) in the held-out set uses the same seed, so a held-out subject's image
    # at site S equals what train would have had.
    h = _read_tsv(generated / "heldout" / "participants.tsv")[0]
    hsrc = nib.load(str(fake_ixi / f"{h['ixi_scan_id']}_T1_2mm.nii.gz"))
    hexp = simulate(hsrc.get_fdata(dtype=np.float32), hsrc.affine, SITES["siteB"],
                    derive_seed(0, h["ixi_scan_id"], "siteB"))
    hsub = h["participant_id"]
    himg = nib.load(str(generated / "heldout" / hsub / "ses-siteB" / "anat" / f"{hsub}_ses-siteB_T1w.nii.gz"))
    assert np.abs(himg.get_fdata() - hexp).max() <= himg.dataobj.slope * 0.51 + 1e-3


def test_sidecars_name_the_site_as_the_scanner(generated):
    for r in _read_tsv(generated / "train" / "participants.tsv"):
        sub = r["participant_id"]
        meta = json.loads((generated / "train" / sub / "anat" / f"{sub}_T1w.json").read_text())
        assert meta["Manufacturer"] == "Simulated"
        assert meta["ManufacturersModelName"] == r["site"]
        assert meta["MagneticFieldStrength"] == SITES[r["site"]].field_strength


def test_dataset_descriptions_credit_ixi_and_name_the_generator(generated):
    for kind in ("train", "heldout"):
        desc = json.loads((generated / kind / "dataset_description.json").read_text())
        assert desc["DatasetType"] == "raw" and desc["License"] == "CC BY-SA 3.0"
        assert "brain-development.org" in desc["Acknowledgements"]
        assert "NiChart" in desc["Acknowledgements"]
        assert "make_ixi_sites.py" in desc["GeneratedBy"][0]["Name"]
        assert '"noise"' in desc["GeneratedBy"][0]["Description"]  # simulator parameters
        assert "IXI" in (generated / kind / "README").read_text()


def test_generated_datasets_pass_the_bids_validator(generated):
    exe = _validator()
    for kind in ("train", "heldout"):
        proc = subprocess.run([exe, "--format", "json", "-r", str(generated / kind)],
                              capture_output=True, text=True, timeout=120)
        report = json.loads(proc.stdout)
        errors = [i["code"] for i in report["issues"]["issues"] if i["severity"] == "error"]
        for deriv in report.get("derivativesSummary", {}).values():
            errors += [i["code"] for i in deriv["issues"]["issues"] if i["severity"] == "error"]
        assert proc.returncode == 0 and errors == [], (kind, errors)


def test_no_temporary_folders_are_left_next_to_the_output(generated):
    assert sorted(p.name for p in generated.parent.iterdir()) == [generated.name]


# ---------------------------------------------------------------- refusals and exit codes


def test_existing_output_is_refused_without_force_and_replaced_with_it(fake_ixi, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = [str(out), "--ixi", str(fake_ixi), "--sites", "siteA", "--n-train", "1", "--n-heldout", "1"]
    assert mk.main(args) == 73
    assert "--force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert mk.main(args + ["--force"]) == 0
    assert not (out / "keep.txt").exists()
    assert (out / "train" / "participants.tsv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unused_heldout_subjects_stay_out_of_train(fake_ixi, tmp_path):
    out = tmp_path / "out"
    assert mk.main([str(out), "--ixi", str(fake_ixi), "--sites", "siteD", "--n-heldout", "1"]) == 0
    train = {r["ixi_scan_id"] for r in _read_tsv(out / "train" / "participants.tsv")}
    heldout = {r["ixi_scan_id"] for r in _read_tsv(out / "heldout" / "participants.tsv")}
    assert heldout == {HELDOUT_IDS[0]}
    assert train == set(TRAIN_IDS)  # the second held-out scan is in neither


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--sites", "siteA,nowhere"], 64, "siteA"),
        (["--n-heldout", "3"], 64, "--n-heldout"),
        (["--n-train", "4"], 64, "--n-train"),
        (["--bogus"], 64, "unrecognized"),
    ],
)
def test_bad_arguments_exit_64_with_a_one_line_error(fake_ixi, tmp_path, capsys, extra, code, words):
    assert _exit_code([str(tmp_path / "o"), "--ixi", str(fake_ixi), *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1]
    assert not (tmp_path / "o").exists()


def test_missing_ixi_folder_exits_66_naming_it(tmp_path, capsys):
    assert mk.main([str(tmp_path / "o"), "--ixi", str(tmp_path / "nope")]) == 66
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "--ixi" in err and "Traceback" not in err


def test_output_inside_the_ixi_folder_is_refused(fake_ixi):
    assert mk.main([str(fake_ixi / "out"), "--ixi", str(fake_ixi)]) == 64
    assert not (fake_ixi / "out").exists()


def _exit_code(argv):
    """Exit code of the script's main, whether it returns it or argparse exits."""
    try:
        return mk.main(argv)
    except SystemExit as exc:
        return exc.code


# ---------------------------------------------------------------- split and assignment rules


def test_committed_split_has_24_unique_ixi_scan_ids_and_documents_its_rule():
    doc = json.loads(SPLIT.read_text())
    ids = doc["heldout"]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert all(re.fullmatch(r"IXI\d{3}-HH-\d{4}", s) for s in ids)
    assert doc["rule"] == mk.SPLIT_RULE and doc["seed"] == 0


def _fake_scans(n=60):
    rng = np.random.default_rng(5)
    scans = {f"IXI{k:03d}-HH-{k:04d}": {"age": f"{a:.2f}", "sex": "FM"[k % 2]}
             for k, a in enumerate(rng.uniform(20, 85, n))}
    scans["IXI999-HH-9999"] = {"age": "n/a", "sex": "n/a"}
    return scans


def test_heldout_rule_is_seeded_and_stratified_by_sex_and_age():
    scans = _fake_scans()
    chosen = mk.choose_heldout(scans, seed=0)
    assert chosen == mk.choose_heldout(scans, seed=0)
    assert chosen != mk.choose_heldout(scans, seed=1)
    assert len(chosen) == 24 and len(set(chosen)) == 24
    assert "IXI999-HH-9999" not in chosen
    for sex in "FM":
        ranked = sorted((float(v["age"]), s) for s, v in scans.items() if v["sex"] == sex)
        bins = np.array_split(np.array([s for _, s in ranked]), 6)
        assert [sum(s in chosen for s in b) for b in bins] == [2] * 6
    # First 12 = one per (sex, age bin) stratum.
    assert sum(scans[s]["sex"] == "F" for s in chosen[:12]) == 6


def test_site_assignment_is_balanced_and_deterministic():
    scans = _fake_scans(40)
    ids = sorted(scans)
    a = mk.assign_sites(ids, scans, ["siteA", "siteB", "siteC"], seed=0)
    assert a == mk.assign_sites(ids, scans, ["siteA", "siteB", "siteC"], seed=0)
    counts = [list(a.values()).count(s) for s in ("siteA", "siteB", "siteC")]
    assert max(counts) - min(counts) <= 1 and sum(counts) == len(ids)
    for sex in "FM":
        per_site = [sum(1 for s in ids if a[s] == site and scans[s]["sex"] == sex) for site in
                    ("siteA", "siteB", "siteC")]
        assert max(per_site) - min(per_site) <= 2


def test_bids_labels_shorten_ixi_ids_and_fall_back_when_not_unique():
    assert mk.bids_labels(["IXI012-HH-1211"]) == {"IXI012-HH-1211": "IXI012"}
    clash = mk.bids_labels(["IXI012-HH-1211", "IXI012-GUYS-0001"])
    assert clash == {"IXI012-HH-1211": "IXI012HH1211", "IXI012-GUYS-0001": "IXI012GUYS0001"}
