"""Every benchmark script run as a subprocess on a tiny setting: its printed table and its files.

The material is made here from the vendored real scans (hcld_bids/data/t1w) and hcld_bids.simulate; the
models are tiny networks with seeded random weights, so the figures only have to be well-formed, not good.
Subprocesses inherit the seeded TEMPLATEFLOW_HOME of tests/conftest.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANS = ROOT / "hcld_bids" / "data" / "t1w"
BENCH = ROOT / "benchmarks"
TINY_AE = dict(channels=(8, 16, 16), num_res_blocks=1, norm_groups=4)
TINY_UNET = dict(channels=(8, 16, 16), head_channels=16, norm_groups=4)
SMALL_GRID = (32, 48, 32)


def _subprocess(args, timeout=240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _run(args, timeout=240):
    proc = _subprocess(args, timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _run_failing(args, timeout=240) -> str:
    """Run a benchmark that must refuse its arguments in one line: non-zero exit, no traceback; its stderr."""
    proc = _subprocess(args, timeout)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _finite(rows, keys):
    for row in rows:
        for key in keys:
            assert math.isfinite(float(row[key])), (key, row)


def _tiny_models():
    import torch

    from hcld_bids.model import AutoencoderKL, DiffusionUNet

    torch.manual_seed(0)
    ae = AutoencoderKL(**TINY_AE).eval()
    unet = DiffusionUNet(**TINY_UNET).eval()
    for p in unet.out_conv.parameters():  # a zero output layer would make every DDIM step trivial
        torch.nn.init.normal_(p, std=0.02)
    return ae, unet


def _site_images(scan: str, sites, shape=SMALL_GRID):
    """A vendored scan center-cropped to ``shape``, rendered at each simulated site, scaled to [0, 1]."""
    from scipy import ndimage as ndi

    from hcld_bids.simulate import SITES, simulate

    img = nib.as_closest_canonical(nib.load(str(SCANS / scan)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    centre = [int(round(c)) for c in ndi.center_of_mass(data > np.percentile(data, 60))]
    crop = tuple(slice(max(0, c - s // 2), max(0, c - s // 2) + s) for c, s in zip(centre, shape))
    head = np.zeros(shape, np.float32)
    part = data[crop]
    head[tuple(slice(0, n) for n in part.shape)] = part
    mask = ndi.binary_fill_holes(ndi.binary_opening(head > 0.25 * np.percentile(head, 99), iterations=1))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    out = {}
    for k, site in enumerate(sites):
        vol = simulate(head, affine, SITES[site], seed=k)
        low, high = np.percentile(vol[mask], [0.5, 99.5])
        out[site] = (np.clip((vol - low) / (high - low), 0, 1).astype(np.float32), mask)
    return out


def _site_histogram(volumes, masks):
    from hcld_bids.reports.metrics import site_histogram

    edges, density = site_histogram(volumes, masks)
    return {"edges": [float(e) for e in edges], "density": [float(d) for d in density]}


# ------------------------------------------------------------------------------ quality_simulated.py

@pytest.fixture(scope="module")
def simulated_setting(tmp_path_factory):
    """Two heads x two simulated sites on a 32x48x32 grid, and a tiny bundle with both sites."""
    from hcld_bids.model import compute_site_prototype, save_bundle

    root = tmp_path_factory.mktemp("quality_simulated")
    inputs = root / "inputs"
    inputs.mkdir()
    sites = ("siteA", "siteB")
    per_site = {s: ([], []) for s in sites}
    for sub, scan in (("h1", "siemens_prismafit3T_xa30_s6_norm.nii.gz"), ("h2", "uih_umr770_3T_run1_2mm.nii.gz")):
        for site, (vol, mask) in _site_images(scan, sites).items():
            affine = np.diag([2.0, 2.0, 2.0, 1.0])
            nib.save(nib.Nifti1Image(vol, affine), inputs / f"sub-{sub}_ses-{site}_t1w.nii.gz")
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), inputs / f"sub-{sub}_ses-{site}_mask.nii.gz")
            per_site[site][0].append(vol)
            per_site[site][1].append(mask)
    ae, unet = _tiny_models()
    protos = {s: compute_site_prototype(ae, v, 1.0) for s, (v, _) in per_site.items()}
    save_bundle(root / "bundle", ae, unet, 1.0, protos,
                {"sites": {s: {"intensity_histogram": _site_histogram(v, m), "n_images": len(v)}
                           for s, (v, m) in per_site.items()}})
    return root


@pytest.mark.slow
def test_quality_simulated_tiny(simulated_setting):
    out = simulated_setting / "out"
    stdout = _run([BENCH / "quality_simulated.py", "--inputs", simulated_setting / "inputs", "--bundle",
                   simulated_setting / "bundle", "--out", out, "--targets", "siteA", "--inversion-steps", "2",
                   "--sampling-steps", "1", "--t-end", "300", "--latent-adain"])
    methods = ["input", "histmatch", "nyul", "hcld", "hcld_t300", "latent_adain"]
    pairs = _read_tsv(out / "pairs.tsv")
    keys = ["ssim", "psnr", "mae", "w1_same_head", "w1_site", "structure_preservation"]
    assert list(pairs[0]) == ["method", "subject", "source", "target", *keys]
    assert len(pairs) == 6 * 2  # methods x (2 heads x pair siteB -> siteA)
    assert {(r["method"], r["subject"], r["source"], r["target"]) for r in pairs} == {
        (m, s, "siteB", "siteA") for m in methods for s in ("h1", "h2")}
    _finite(pairs, keys)
    for row in pairs:
        assert -1 <= float(row["ssim"]) <= 1 and float(row["w1_same_head"]) >= 0
        if row["method"] == "input":
            assert float(row["structure_preservation"]) == pytest.approx(1.0)
        if row["method"] == "histmatch":  # mapped onto the stored site histogram
            assert float(row["w1_site"]) < 0.01

    clf = _read_tsv(out / "classifier.tsv")
    assert [r["method"] for r in clf] == methods and {r["target"] for r in clf} == {"siteA"}
    for row in clf:
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and 0.0 <= float(row["accuracy_own_scale"]) <= 1.0
        assert float(row["chance"]) == 0.5 and row["n_images"] == "4" and row["n_sites"] == "2"

    summary = {r["method"]: r for r in _read_tsv(out / "summary.tsv")}
    assert list(summary) == methods
    result = json.loads((out / "summary.json").read_text())
    assert result["subjects"] == ["h1", "h2"] and result["nyul_fit"] == "loso" and result["t_end"] == [300]
    assert result["latent_adain"] is True
    # stopping the inversion early gives another output than the full inversion
    full, early = ([float(r["ssim"]) for r in pairs if r["method"] == m] for m in ("hcld", "hcld_t300"))
    assert full != early
    for method in methods:
        mean = np.mean([float(r["ssim"]) for r in pairs if r["method"] == method])
        assert float(summary[method]["ssim_mean"]) == pytest.approx(mean, abs=1e-4)
        assert result["summary"][method]["n"] == 2
        # the printed table carries the same figures
        line = next(line for line in stdout.splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1].split("±")[0]) == pytest.approx(float(summary[method]["ssim_mean"]), abs=6e-4)
        assert float(cells[7]) == pytest.approx(float(summary[method]["classifier_accuracy"]), abs=6e-4)
        assert float(cells[8]) == pytest.approx(float(summary[method]["classifier_accuracy_own_scale"]), abs=6e-4)
    assert "site classifier: 2 sites, chance 0.500" in stdout


@pytest.mark.slow
def test_quality_simulated_chain_is_the_loss_budget_of_the_bundle_regime(simulated_setting, tmp_path):
    """--chain: the autoencoder's reconstruction, latent AdaIN, each inference regime and the bundle's own
    regime with its ablations, on the same pairs; --participant-label picks the subjects."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(simulated_setting / "bundle", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["inference"] = {"kind": "sdedit", "strength": 0.1, "sampling_steps": 1, "detail": 1.0,
                             "calibrate": True}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    _run([BENCH / "quality_simulated.py", "--inputs", simulated_setting / "inputs", "--bundle", bundle, "--out", out,
          "--targets", "siteA", "--chain", "--participant-label", "sub-h1", "--nyul-fit", "bundle",
          "--cache", tmp_path / "cache"])
    pairs = _read_tsv(out / "pairs.tsv")
    methods = list(dict.fromkeys(r["method"] for r in pairs))
    assert methods == ["input", "histmatch", "nyul", "hcld", "recon", "latent_adain", "full", "research", "dual10",
                       "sdedit02", "sdedit05", "sdedit10", "sdedit20", "sdedit05_5steps", "hcld_nodetail",
                       "hcld_nocalibration", "hcld_plain"]
    assert {r["subject"] for r in pairs} == {"h1"}
    result = json.loads((out / "summary.json").read_text())
    assert result["hcld_regime"]["kind"] == "sdedit" and result["regimes"]["research"]["kind"] == "research"
    ssim = {r["method"]: float(r["ssim"]) for r in pairs}
    # calibration maps onto the site histogram (as histogram matching does); its ablation does not
    w1 = {r["method"]: float(r["w1_site"]) for r in pairs}
    assert w1["hcld"] < 0.02 and w1["hcld_nocalibration"] > w1["hcld"]
    assert len({round(v, 6) for v in ssim.values()}) > 10  # the regimes give different outputs
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 2 * (len(methods) - 5)  # hcld and the regimes, for both source sites; nothing else


def test_detail_gain_sweep_matches_the_harmonizer_adain_regime(simulated_setting, tmp_path):
    """detail_gain.py's output for gain g is what the Harmonizer's adain regime with detail g and calibration
    gives (same SSIM to the same head as quality_simulated's --regime), and gain 0 differs from gain 1."""
    out = tmp_path / "gains.tsv"
    stdout = _run([BENCH / "detail_gain.py", "--inputs", simulated_setting / "inputs", "--bundle",
                   simulated_setting / "bundle", "--gains", "0", "1", "--out", out])
    rows = _read_tsv(out)
    assert [r["pair"] for r in rows] == ["siteA -> siteB", "siteB -> siteA", "mean"]
    assert list(rows[0]) == ["pair", "input", "histmatch", "g0", "g1", "smoothed0.7"]
    assert rows[0]["g0"] != rows[0]["g1"] and "best gain chosen per pair" in stdout
    q = tmp_path / "q"
    _run([BENCH / "quality_simulated.py", "--inputs", simulated_setting / "inputs", "--bundle",
          simulated_setting / "bundle", "--out", q, "--targets", "siteA", "--nyul-fit", "bundle",
          "--regime", "a1=adain,detail=1,calibrate=true"])
    ssim = [float(r["ssim"]) for r in _read_tsv(q / "pairs.tsv") if r["method"] == "a1"]
    assert float(rows[1]["g1"]) == pytest.approx(float(np.mean(ssim)), abs=1e-5)
    _run([BENCH / "detail_gain.py", "--inputs", simulated_setting / "inputs", "--bundle",
          simulated_setting / "bundle", "--gains", "1", "--smooth", "0", "--wiener", "3", "--out", out])
    wiener_rows = _read_tsv(out)
    assert list(wiener_rows[0]) == ["pair", "input", "histmatch", "g1", "wiener3_g1"]
    assert wiener_rows[0]["g1"] == rows[0]["g1"] and wiener_rows[0]["wiener3_g1"] != rows[0]["g1"]


def _quality_simulated_module():
    sys.path.insert(0, str(BENCH))
    try:
        import quality_simulated
    finally:
        sys.path.remove(str(BENCH))
    return quality_simulated


def test_site_classifier_counts_differences_in_units_of_the_unharmonized_images():
    """Outputs whose sources differ by 1e-6 (a histogram calibration's rounding) are told apart once the
    scaler is fitted to them; scaled on the inputs' spread they are at chance, and real differences are not."""
    q = _quality_simulated_module()
    rng = np.random.default_rng(0)
    sites = [s for _ in range(8) for s in ("A", "B", "C", "D")]
    groups = [g for g in range(8) for _ in range(4)]
    offset = np.array([{"A": 0, "B": 1, "C": 2, "D": 3}[s] for s in sites], float)[:, None]
    inputs = rng.normal(scale=0.2, size=(32, 6)) + offset * np.array([1.0, -1, 0.5, 0, 0, 2])
    calibrated = np.tile(rng.normal(size=6), (32, 1)) + 1e-6 * (offset + rng.normal(scale=0.05, size=(32, 6)))
    calibrated[:, 5] = 0.25  # a feature that never varies keeps SD 1
    scale = q.metrics.feature_scale(inputs)
    assert q.metrics.feature_scale(calibrated)[1][5] == 1.0
    assert q.site_classifier_accuracy(inputs, sites, groups, scale=scale) >= 0.9
    assert q.site_classifier_accuracy(calibrated, sites, groups) >= 0.9
    assert q.site_classifier_accuracy(calibrated, sites, groups, scale=scale) <= 0.4


def test_nyul_maps_landmarks_onto_the_standard_scale():
    q = _quality_simulated_module()
    rng = np.random.default_rng(0)
    vol = rng.random((20, 20, 20)).astype(np.float32) ** 2
    mask = np.ones(vol.shape, bool)
    mask[:2] = False
    standard = np.linspace(0.1, 0.9, len(q.NYUL_PERCENTILES))
    out = q.nyul_map(vol, mask, standard)
    assert np.allclose(q.nyul_landmarks(out[mask]), standard, atol=5e-3)
    assert np.all(out[~mask] == 0) and out.min() >= 0 and out.max() <= 1
    # landmarks read off a histogram agree with those of the sample it was made of
    edges = np.linspace(0, 1, 257)
    density, _ = np.histogram(vol[mask], bins=edges, density=True)
    assert np.allclose(q.nyul_landmarks_from_histogram(edges, density), q.nyul_landmarks(vol[mask]), atol=5e-3)


# ------------------------------------------------------------------------------ quality_real_vendors.py

@pytest.mark.slow
def test_quality_real_vendors_tiny(tmp_path):
    """Two vendors' scans and a tiny bundle on a 32x48x32 window of the template grid. ``--quick`` places the
    scans on the grid without ANTs (the CLI path, N4 and registration of every scan, takes minutes on 2 loaded
    cores)."""
    from hcld_bids.model import compute_site_prototype, save_bundle

    demo = json.loads((ROOT / "hcld_bids" / "data" / "models" / "demo" / "manifest.json").read_text())
    # the demo model's preprocessing with a small window of the template grid (the brain's centre) as model grid
    preprocessing = dict(demo["preprocessing"], grid={"shape": list(SMALL_GRID), "start": [29, 32, 28]})
    ae, unet = _tiny_models()
    phantom = np.random.default_rng(0).random(SMALL_GRID, dtype=np.float32)
    save_bundle(tmp_path / "bundle", ae, unet, 1.0, {"siteA": compute_site_prototype(ae, [phantom], 1.0)},
                {"preprocessing": preprocessing, "sites": {"siteA": {"n_images": 1}}})
    out = tmp_path / "out"
    stdout = _run([BENCH / "quality_real_vendors.py", "--out", out, "--work", tmp_path / "work", "--bundle",
                   tmp_path / "bundle", "--scans", "siemens-s6-norm", "uih-run1", "--inversion-steps", "1",
                   "--sampling-steps", "1", "--quick"])
    rows = _read_tsv(out / "vendors.tsv")
    keys = ["w1_target", "dice", "grad_corr", "structure_preservation"]
    assert list(rows[0]) == ["scan", "vendor", "target", "same_vendor", "method", *keys]
    assert len(rows) == 2 * 2 * 3  # scans x target vendors x methods
    assert {(r["scan"], r["target"]) for r in rows} == {(s, t) for s in ("siemens-s6-norm", "uih-run1")
                                                         for t in ("siemens", "uih")}
    _finite(rows, keys)
    for row in rows:
        assert 0 <= float(row["dice"]) <= 1 and -1 <= float(row["grad_corr"]) <= 1
        assert row["same_vendor"] == str(int(row["vendor"] == row["target"]))
        if row["method"] == "input":
            assert float(row["grad_corr"]) == pytest.approx(1.0)
        if row["method"] == "histmatch":
            assert float(row["w1_target"]) < 0.01
    summary = _read_tsv(out / "summary.tsv")
    assert [(r["pairs"], r["method"]) for r in summary] == [
        (p, m) for p in ("other vendor", "same vendor", "all") for m in ("input", "histmatch", "hcld")]
    assert [r["n"] for r in summary] == ["2"] * 6 + ["4"] * 3
    for r in summary:
        line = next(line for line in stdout.splitlines() if line.startswith(f"| {r['pairs']} | {r['method']} |"))
        assert float(line.split("|")[4]) == pytest.approx(float(r["w1_target_mean"]), abs=6e-5)
    assert "2 scans x 2 target vendors" in stdout and "(--quick: no ANTs)" in stdout


# ------------------------------------------------------------------------------ the timing benchmarks

@pytest.mark.slow
def test_group_scale_small():
    stdout = _run([BENCH / "group_scale.py", "--n", "3", "--variants", "1", "--jobs", "1"])
    m = re.search(r"generated 3 participants \(9 images, [\d.]+ GB\) in \d+ s", stdout)
    assert m, stdout
    m = re.search(r"run_group\(n_jobs=1\): ([\d.]+) s for (\d+) images \((\d+) ms per image\)", stdout)
    assert m, stdout
    assert float(m[1]) > 0 and int(m[2]) == 3  # one harmonized T1w per participant
    assert "target: 3 participants in < 300 s on 2 cores -> met" in stdout


@pytest.mark.slow
def test_participant_e2e_one_scan_quick(tmp_path):
    stdout = _run([BENCH / "participant_e2e.py", "--scanner", "uih", "--nprocs", "2", "--keep", tmp_path, "--quick"],
                  timeout=400)
    assert "2 + 1 DDIM steps and --sloppy (--quick)" in stdout
    nodes = dict(line.rsplit("\t", 1) for line in stdout.splitlines()[2:] if "\t" in line)
    for node in ("anat_preproc_wf.n4_head", "anat_preproc_wf.register", "harmonization_wf.harmonize",
                 "total (process wall time, start-up and writing included)"):
        assert float(nodes[node]) > 0, stdout
    total = float(nodes.pop("total (process wall time, start-up and writing included)"))
    assert total >= max(float(v) for v in nodes.values())
    assert list(tmp_path.glob("out/sub-01/anat/*_T1w.nii.gz"))
    # where the wall time went: the phases follow one another from the process's start to its end
    phases = {k: float(v) for k, v in nodes.items() if k.startswith("phase: ")}
    assert len(phases) == 9 and all(v >= 0 for v in phases.values()), phases
    assert abs(sum(phases.values()) - total) < 0.5, (phases, total)
    harmonize = float(nodes["harmonization_wf.harmonize"])
    assert abs(float(nodes["total without the harmonization node"]) - (total - harmonize)) < 0.2


@pytest.mark.slow
def test_structure_threshold_on_prepared_heads(tmp_path, templateflow_home):
    """The analysis part on one head already on the template grid (the ANTs preparation is skipped: its cache
    is filled here, from a vendored scan rendered at the four simulated sites). With one subject the "other
    person's head" case compares the head with itself."""
    from hcld_bids.reports.synthetic import GRID_AFFINE, resample_scan
    from hcld_bids.simulate import SITES, simulate

    tpl = templateflow_home / "tpl-MNI152NLin6Asym"
    mask = np.asarray(nib.load(tpl / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz").dataobj) > 0
    sites_dir, work = tmp_path / "sites", tmp_path / "work"
    work.mkdir()
    for k, (sub, scan) in enumerate([("sub-01", "siemens_prismafit3T_xa30_s6_norm.nii.gz")]):
        (sites_dir / sub).mkdir(parents=True)
        head, _ = resample_scan(SCANS / scan)
        for j, site in enumerate(("siteA", "siteB", "siteC", "siteD")):
            vol = simulate(head, GRID_AFFINE, SITES[site], seed=10 * k + j)
            low, high = np.percentile(vol[mask], [0.5, 99.5])
            np.save(work / f"{sub}_{site}.npy", np.clip((vol - low) / (high - low), 0, 1).astype(np.float32))
    stdout = _run([BENCH / "structure_threshold.py", "--sites", sites_dir, "--work", work, "--n", "1",
                   "--template", tpl / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz", "--quick"])
    assert "1 subjects" in stdout
    table = {}
    for line in stdout.splitlines():
        m = re.match(r"((?:honest|damage): .+?)\s+((?:-?[\d.]+|nan)(?:\s+(?:-?[\d.]+|nan)){8})$", line)
        if m:
            table[m[1]] = [float(v) for v in m[2].split()]
    assert len(table) == 17, stdout
    for case, values in table.items():
        for lo, med, hi in (values[0:3], values[3:6], values[6:9]):
            assert lo <= med <= hi, (case, values)
        assert 0 <= values[6] <= values[8] <= 1  # Dice
    assert table["damage: shift 4mm"][1] < table["honest: noise 0.05"][1]
    assert "thresholds: SP <" in stdout


# ------------------------------------------------------------------ quality_reference_loso.py, quality_ceiling.py

def test_reference_loso_scores_an_unseen_site_reference_and_refuses_a_bundle_that_saw_it(simulated_setting,
                                                                                           tmp_path):
    """A bundle with siteA only harmonizes siteA images toward a reference of siteB (another head); the
    table has every method on every (head, reference) pair; a bundle that has siteB is refused."""
    from hcld_bids.model import compute_site_prototype, save_bundle

    ae, unet = _tiny_models()
    inputs = simulated_setting / "inputs"
    vols = [np.asarray(nib.load(p).dataobj, np.float32) for p in sorted(inputs.glob("*_ses-siteA_t1w.nii.gz"))]
    masks = [np.asarray(nib.load(p).dataobj) > 0 for p in sorted(inputs.glob("*_ses-siteA_mask.nii.gz"))]
    save_bundle(tmp_path / "loso", ae, unet, 1.0, {"siteA": compute_site_prototype(ae, vols, 1.0)},
                {"sites": {"siteA": {"intensity_histogram": _site_histogram(vols, masks), "n_images": 2}}})
    out = tmp_path / "out"
    stdout = _run([BENCH / "quality_reference_loso.py", "--inputs", inputs, "--bundle", tmp_path / "loso",
                   "--left-out", "siteB", "--bundle-seen", simulated_setting / "bundle", "--out", out,
                   "--reference-calibration", "0", "1"])
    rows = _read_tsv(out / "pairs.tsv")
    methods = ["input", "histmatch_ref", "hcld_ref", "hcld_ref_cal0", "hcld_ref_cal1", "hcld_ref_seen",
               "hcld_site_seen"]
    assert {(r["method"], r["pair"]) for r in rows} == {
        (m, p) for m in methods for p in ("h1:siteA:h2", "h2:siteA:h1")}
    _finite(rows, ["ssim", "w1_same_head", "w1_site", "structure_preservation"])
    hm = [r for r in rows if r["method"] == "histmatch_ref"]
    assert all(float(r["w1_site"]) < 0.02 for r in hm)  # matched onto the reference's histogram
    by = {(r["method"], r["pair"]): r for r in rows}
    for pair in ("h1:siteA:h2", "h2:siteA:h1"):
        # this bundle's regime does not calibrate: weight 0 is its output, weight 1 the reference's histogram
        assert float(by[("hcld_ref_cal0", pair)]["ssim"]) == pytest.approx(float(by[("hcld_ref", pair)]["ssim"]))
        assert float(by[("hcld_ref_cal1", pair)]["w1_site"]) < 0.02 < float(by[("hcld_ref_cal0", pair)]["w1_site"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["left_out"] == "siteB" and summary["pairs"] == 2
    worse = summary["summary"]["hcld_ref"]
    diffs = [float(r["ssim"]) - float(i["ssim"]) for r in rows if r["method"] == "hcld_ref"
             for i in rows if i["method"] == "input" and i["pair"] == r["pair"]]
    assert worse["worst_difference"] == pytest.approx(min(diffs), abs=1e-4)
    assert worse["share_worse"] == pytest.approx(np.mean(np.array(diffs) < 0))
    assert "| hcld_ref |" in stdout
    loso = [BENCH / "quality_reference_loso.py", "--inputs", inputs]
    assert "trained with that site" in _run_failing(
        loso + ["--bundle", simulated_setting / "bundle", "--left-out", "siteB", "--out", tmp_path / "o2"])
    assert "need at least two subjects with an image at siteC" in _run_failing(
        loso + ["--bundle", tmp_path / "loso", "--left-out", "siteC", "--out", tmp_path / "o3"])
    assert "must be in [0, 1]" in _run_failing(
        loso + ["--bundle", tmp_path / "loso", "--left-out", "siteB", "--out", tmp_path / "o4",
                "--reference-calibration", "1.5"])


def test_ceiling_scores_a_rescan_against_the_original(simulated_setting, tmp_path):
    """An identical rescan scores SSIM 1 and W1 0; a noisier one less; per-site rows and the methods of a
    pairs.tsv are set beside them."""
    import shutil

    inputs = simulated_setting / "inputs"
    rescan = tmp_path / "rescan"
    rescan.mkdir()
    for path in inputs.glob("sub-h1_*"):
        shutil.copy(path, rescan / path.name)
    img = nib.load(inputs / "sub-h1_ses-siteA_t1w.nii.gz")
    noisy = np.asarray(img.dataobj, np.float32)
    noisy = np.clip(noisy + np.random.default_rng(0).normal(0, 0.05, noisy.shape) * (noisy > 0), 0, 1)
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), img.affine), rescan / "sub-h1_ses-siteA_t1w.nii.gz")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("method\tsubject\tsource\ttarget\tssim\nhcld\th1\tsiteB\tsiteA\t0.5\nhcld\th1\tsiteA\tsiteB\t0.7\n")
    out = tmp_path / "out"
    stdout = _run([BENCH / "quality_ceiling.py", "--inputs", inputs, "--rescan", rescan, "--out", out,
                   "--pairs", pairs])
    rows = {(r["subject"], r["site"]): r for r in _read_tsv(out / "rescan.tsv")}
    assert set(rows) == {("h1", "siteA"), ("h1", "siteB")}  # h2 has no rescan
    assert float(rows["h1", "siteB"]["ssim"]) == pytest.approx(1.0, abs=1e-6)
    assert float(rows["h1", "siteB"]["w1_same_head"]) == pytest.approx(0.0, abs=1e-9)
    assert float(rows["h1", "siteA"]["ssim"]) < 0.95
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods_ssim_by_target"] == {"hcld": {"siteA": 0.5, "siteB": 0.7}}
    assert "| siteA |" in stdout and "| all |" in stdout


def test_spectral_filters_scores_each_gain_against_the_same_head(simulated_setting, tmp_path):
    import shutil

    train = tmp_path / "train"
    train.mkdir()
    lines = ["participant_id\tsite"]
    for path in sorted((simulated_setting / "inputs").glob("*_t1w.nii.gz")):
        sub, site = path.name.split("_")[0][4:], path.name.split("_")[1][4:]
        label = f"sub-{sub}{site}"
        shutil.copy(path, train / f"{label}_t1w.nii.gz")
        shutil.copy(str(path).replace("_t1w", "_mask"), train / f"{label}_mask.nii.gz")
        lines.append(f"{label}\t{site}")
    (train / "participants.tsv").write_text("\n".join(lines) + "\n")
    stdout = _run([BENCH / "spectral_filters.py", "--inputs", simulated_setting / "inputs", "--train", train,
                   "--train-sites", train / "participants.tsv", "--eval", "h1", "--fit", "h2", "--bins", "4",
                   "--out", tmp_path / "rows.tsv"])
    gains = ["ratio_site", "ratio_own", "ratio_input", "wiener", "wiener_excess", "oracle_pair", "oracle_image"]
    rows = _read_tsv(tmp_path / "rows.tsv")
    assert [(r["source"], r["target"]) for r in rows] == [("siteA", "siteB"), ("siteB", "siteA")]
    _finite(rows, ["histmatch", *gains])
    for row in rows:
        assert all(0 < float(row[k]) <= 1 for k in ["histmatch", *gains])
        assert float(row["ratio_own"]) != float(row["histmatch"])  # the filter changed the image
        assert float(row["ratio_input"]) == float(row["ratio_own"])  # on this base the input is the image
    assert "| all | " in stdout and all(g in stdout for g in gains)


# ------------------------------------------------------------------------------ registration_consistency.py

def test_registration_consistency_measures_how_far_a_heads_sessions_are_placed_apart(tmp_path, templateflow_home):
    import ants

    def write(sub, site, shift_mm):
        d = tmp_path / "work" / "hcld_bids_wf" / f"sub_{sub}_wf" / f"t1w_ses_{site}_wf" / "anat_preproc_wf" / "register"
        d.mkdir(parents=True)
        xfm = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                         translation=(shift_mm, 0.0, 0.0))
        ants.write_transform(xfm, str(d / "T1w_to_template_fwd_xfm.mat"))

    write("h1", "siteA", 0.0)
    write("h1", "siteB", 1.0)   # placed 1 mm apart: each session 0.5 mm from their mean
    write("h2", "siteA", 0.0)
    write("h2", "siteB", 0.0)
    write("h2", "siteC", 0.0)
    write("h3", "siteA", 3.0)   # one session only: nothing to compare, left out
    out = _run([BENCH / "registration_consistency.py", tmp_path / "work", "--out", tmp_path / "rows.tsv"])
    rows = {(r["subject"], r["site"]): float(r["rms_mm"]) for r in _read_tsv(tmp_path / "rows.tsv")}
    assert set(rows) == {("h1", "siteA"), ("h1", "siteB"), ("h2", "siteA"), ("h2", "siteB"), ("h2", "siteC")}
    assert rows[("h1", "siteA")] == pytest.approx(0.5, abs=1e-3) and rows[("h1", "siteB")] == pytest.approx(0.5, abs=1e-3)
    assert all(rows[("h2", s)] < 1e-6 for s in ("siteA", "siteB", "siteC"))
    assert "2 heads" in out and "siteA 0.25" in out
    # a work directory without two sessions of one head is refused in one line
    proc = _subprocess([BENCH / "registration_consistency.py", tmp_path / "work", "--participant-label", "h3"])
    assert proc.returncode == 2 and "no head with two or more registered sessions" in proc.stderr
