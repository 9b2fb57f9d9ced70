"""The demo model's training scripts at a tiny size on the CPU: the resumable driver (train_demo.py) and the
prepared GPU session (gpu_session.py), on a pack made here from the vendored scans."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "demo_model"))
sys.path.insert(0, str(ROOT / "tests" / "model"))

import train_demo  # noqa: E402
from conftest import REAL_SCANS, load_real_volume  # noqa: E402


def _pack(dest: Path, subjects=("a", "b"), sites=("siteA", "siteB"), seed: int = 0) -> Path:
    """A pack like pack_inputs.py writes: 32x48x32 volumes (uint8), masks, sites, labels, manifest_base.json."""
    from hcld_bids.reports.metrics import site_histogram
    from hcld_bids.simulate import SITES, restyle_model_volume

    vols, masks, labels, site_of = [], [], [], []
    for k, sub in enumerate(subjects):
        base = load_real_volume(REAL_SCANS[k % len(REAL_SCANS)])
        base[base < 0.15] = 0.0
        for j, site in enumerate(sites):
            vol = restyle_model_volume(base, SITES[site], np.random.default_rng(10 * k + j + 100 * seed))
            vols.append(vol)
            masks.append(vol > 0)
            labels.append(f"sub-{sub}_ses-{site}")
            site_of.append(site)
    dest.mkdir(parents=True)
    np.savez_compressed(dest / "inputs.npz", volumes=np.round(np.stack(vols) * 255).astype(np.uint8),
                        masks=np.packbits(np.stack(masks), axis=-1), shape=np.array(vols[0].shape),
                        sites=np.array(site_of), labels=np.array(labels))
    hists = {}
    for site in sites:
        idx = [i for i, s in enumerate(site_of) if s == site]
        edges, density = site_histogram([vols[i] for i in idx], [masks[i] for i in idx])
        hists[site] = {"n_images": len(idx), "intensity_histogram": {"edges": edges.tolist(),
                                                                     "density": density.tolist()}}
    (dest / "manifest_base.json").write_text(json.dumps({
        "sites": hists, "training": {"data": {"n_images": len(vols), "sites": {s: 2 for s in sites}}}}))
    return dest


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    root = tmp_path_factory.mktemp("packs")
    return _pack(root / "train"), _pack(root / "test", subjects=("c", "d"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_load_pack_reads_uint8_volumes_back_to_unit_range(packs):
    volumes, masks, sites, labels = train_demo.load_pack(packs[0])
    assert len(volumes) == 4 and volumes[0].dtype == np.float32 and volumes[0].shape == (32, 48, 32)
    assert 0.0 <= min(v.min() for v in volumes) and max(v.max() for v in volumes) == pytest.approx(1.0, abs=1e-6)
    assert sites == ["siteA", "siteB"] * 2 and labels[1] == "sub-a_ses-siteB"
    assert all(m[v > 0].all() and m.sum() > 0.9 * (v > 0).sum() for m, v in zip(masks, volumes))


@pytest.fixture(scope="module")
def trained(packs, tmp_path_factory):
    """Two runs of train_demo.py on one state: the first stops inside stage 1, the second finishes."""
    root = tmp_path_factory.mktemp("trained")
    state = root / "state"
    common = ["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--state", str(state), "--tiny",
              "--threads", "1", "--reserve-minutes", "0"]
    codes = [train_demo.main(common + ["--minutes", "5", "--stages", "1",
                                       "--recipe-json", '{"eval_every": {"stage1": 2, "stage2": 2}}'])]
    first_curve = _rows(state / "curve.csv")
    try:
        train_demo.main(common + ["--minutes", "1", "--recipe-json", '{"stage1": {"steps": 9}}'])
        refused = None
    except SystemExit as exc:
        refused = str(exc)
    codes.append(train_demo.main(common + ["--minutes", "5", "--bundle", str(root / "bundle")]))
    return {"state": state, "bundle": root / "bundle", "codes": codes, "first_curve": first_curve,
            "refused": refused}


@pytest.mark.slow
def test_train_demo_resumes_from_its_state_and_writes_a_bundle(packs, trained):
    from hcld_bids.model import Harmonizer, load_bundle

    state, bundle = trained["state"], trained["bundle"]
    assert trained["codes"] == [0, 0]
    # the first run's budget ended inside stage 1 (the --stages 1 run stops at the stage's last step)
    first = trained["first_curve"]
    assert [r["stage"] for r in first] == ["stage1", "stage1"] and [r["step"] for r in first] == ["2", "4"]
    assert all(0.0 < float(r["value"]) <= 1.0 and r["metric"] == "heldout_recon_ssim" for r in first)
    assert float(first[1]["wall_s"]) > float(first[0]["wall_s"]) > 0
    assert "recipe is fixed" in trained["refused"]
    # the second run resumed: stage 1 was done, stage 2 trained its steps, the bundle was written
    curve = _rows(state / "curve.csv")
    assert [r["stage"] for r in curve] == ["stage1"] * 2 + ["stage2"] * 2
    assert all(float(r["value"]) > 0 and r["metric"] == "heldout_noise_mse" for r in curve[2:])
    record = json.loads((state / "record.json").read_text())
    assert len(record["runs"]) == 2 and record["runs"][1]["stage2_steps"] == 4
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inference"]["kind"] == "sdedit" and manifest["training"]["stage2"]["steps_done"] == 4
    assert manifest["training"]["recipe"]["autoencoder"]["patch_size"] == 2
    assert len(manifest["training"]["learning_curve"]) == 4
    assert set(manifest["sites"]) == {"siteA", "siteB"}
    # the pack predates the spectral calibration: the bundle's sites get their spectra from its images
    assert all(len(e["power_spectrum"]) == 8 ** 3 for e in manifest["sites"].values())
    h = Harmonizer(load_bundle(bundle))
    vol = train_demo.load_pack(packs[1])[0][0]
    out = h.harmonize(vol, h.style_from_site("siteA"), mask=vol > 0)
    spectral = h.harmonize(vol, h.style_from_site("siteA"), regime=h.resolve_regime(spectrum=1.0), mask=vol > 0)
    assert not spectral[vol == 0].any() and not np.allclose(spectral, out, atol=1e-3)
    assert out.shape == vol.shape and not out[vol == 0].any()
    # only the state, no pile of checkpoints: one checkpoint per stage
    assert sorted(p.name for p in state.rglob("checkpoint*")) == ["checkpoint.safetensors", "checkpoint.safetensors"]


@pytest.mark.slow
def test_gpu_session_runs_on_the_cpu_at_a_tiny_size(packs, trained, tmp_path):
    """The prepared GPU script, on the CPU: resumes the trained state (so it only evaluates, writes the bundle
    and times), returns its files under --out."""
    import shutil

    import gpu_session

    state = tmp_path / "state"
    shutil.copytree(trained["state"], state)
    out = tmp_path / "out"
    code = gpu_session.main(["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--test-pack", str(packs[1]),
                             "--out", str(out), "--minutes", "4", "--eval-minutes", "1", "--speed-minutes", "1",
                             "--state", str(state), "--tiny", "--device", "cpu"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["bundle.tar", "record.json", "speed.txt", "state.tar"]
    record = json.loads((out / "record.json").read_text())
    assert record["steps"]["train"]["exit"] == 0 and record["seconds"] < 240
    quality = record["quality"]["summary"]
    assert set(quality) == {"input", "histmatch", "final"} and quality["final"]["n"] == 4
    with tarfile.open(out / "state.tar") as tar:
        names = tar.getnames()
    assert {"recipe.json", "stage1/checkpoint.safetensors", "stage2/checkpoint.safetensors", "curve.csv", "record.json"} <= set(names)
    with tarfile.open(out / "bundle.tar") as tar:
        assert "manifest.json" in tar.getnames()
    assert "ours" in (out / "speed.txt").read_text().lower()
    # the session's run is recorded in the state it returns, the repository's copy is untouched
    assert len(json.loads((trained["state"] / "record.json").read_text())["runs"]) == 2


def test_exclude_site_drops_the_site_from_the_pack_the_manifest_and_the_augmentation(packs):
    volumes, masks, sites, labels = train_demo.load_pack(packs[0])
    base = json.loads((packs[0] / "manifest_base.json").read_text())
    base["training"]["subjects"] = ["a", "b"]
    v, m, s, lab, new = train_demo.exclude_sites(volumes, masks, sites, labels, base, ["siteB"])
    assert s == ["siteA", "siteA"] and lab == ["sub-a_ses-siteA", "sub-b_ses-siteA"] and len(v) == len(m) == 2
    assert set(new["sites"]) == {"siteA"} and set(new["training"]["data"]["sites"]) == {"siteA"}
    assert new["training"]["data"]["n_images"] == 2 and new["training"]["data"]["excluded_sites"] == ["siteB"]
    assert set(base["sites"]) == {"siteA", "siteB"}  # the loaded manifest is not changed in place
    assert train_demo.exclude_sites(volumes, masks, sites, labels, base, []) == (volumes, masks, sites, labels, base)
    with pytest.raises(SystemExit, match="not a site of the pack"):
        train_demo.exclude_sites(volumes, masks, sites, labels, base, ["siteZ"])
    with pytest.raises(SystemExit, match="leaves no training image"):
        train_demo.exclude_sites(volumes, masks, sites, labels, base, ["siteA", "siteB"])


def test_site_augmentation_never_renders_an_excluded_site(monkeypatch):
    import hcld_bids.simulate as simulate

    drawn = []
    monkeypatch.setattr(simulate, "restyle_model_volume", lambda vol, effect, rng: drawn.append(effect.name) or vol)
    rng = np.random.default_rng(0)
    vol = np.zeros((4, 4, 4), np.float32)
    for _ in range(200):
        train_demo.site_augment(vol, rng, exclude=("siteD",))
    named = {n for n in drawn if n in simulate.SITES}
    assert named == {"siteA", "siteB", "siteC"} and len(drawn) == 200


@pytest.mark.slow
def test_train_demo_exclude_site_writes_a_bundle_without_that_site(packs, tmp_path):
    code = train_demo.main(["--pack", str(packs[0]), "--state", str(tmp_path / "state"), "--tiny", "--threads", "1",
                            "--reserve-minutes", "0", "--minutes", "5", "--exclude-site", "siteB",
                            "--bundle", str(tmp_path / "bundle")])
    assert code == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert set(manifest["sites"]) == {"siteA"}
    assert manifest["training"]["data"]["excluded_sites"] == ["siteB"]
    assert "--exclude-site siteB" in json.loads((tmp_path / "state" / "record.json").read_text())["runs"][0]["command"]


def test_coarsen_pack_averages_blocks_pads_and_recomputes_the_site_histograms(tmp_path):
    import coarsen_pack

    src = _pack(tmp_path / "fine")
    assert coarsen_pack.main([str(src), str(tmp_path / "coarse"), "--pad-to", "24", "32", "24"]) == 0
    fine_v, fine_m, fine_sites, fine_labels = train_demo.load_pack(src)
    vols, masks, sites, labels = train_demo.load_pack(tmp_path / "coarse")
    assert (sites, labels) == (fine_sites, fine_labels)
    assert vols[0].shape == masks[0].shape == (24, 32, 24)
    # 32x48x32 -> 16x24x16, centred in 24x32x24: every block mean in the brain, zero in the padding
    inner = (slice(4, 20), slice(4, 28), slice(4, 20))
    expected = coarsen_pack.block_mean(fine_v[0] * fine_m[0], 2)
    expected_mask = coarsen_pack.block_mean(fine_m[0].astype(np.float32), 2) >= 0.5
    np.testing.assert_array_equal(masks[0][inner], expected_mask)
    np.testing.assert_allclose(vols[0][inner][expected_mask], expected[expected_mask], atol=1 / 255 + 1e-6)
    assert not vols[0][~masks[0]].any() and not masks[0][:4].any()
    base = json.loads((tmp_path / "coarse" / "manifest_base.json").read_text())
    old = json.loads((src / "manifest_base.json").read_text())
    assert base["preprocessing"]["grid"]["shape"] == [24, 32, 24] and base["preprocessing"]["resolution"] == 4
    for site in ("siteA", "siteB"):
        density = np.asarray(base["sites"][site]["intensity_histogram"]["density"])
        assert density.sum() > 0 and not np.allclose(density, old["sites"][site]["intensity_histogram"]["density"])
        assert len(base["sites"][site]["power_spectrum"]) == 8 ** 3
    with pytest.raises(SystemExit, match="smaller than the coarse grid"):
        coarsen_pack.main([str(src), str(tmp_path / "c2"), "--pad-to", "8", "8", "8"])
    with pytest.raises(SystemExit, match="not a pack"):
        coarsen_pack.main([str(tmp_path), str(tmp_path / "c3")])


def test_linear_autoencoder_benchmark_scores_each_component_count_and_a_bundle(packs, trained, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import linear_autoencoder

    assert linear_autoencoder.main(["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--channels", "1", "4", "8",
                                    "--bundle", str(trained["bundle"])]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| linear")
            or line.startswith("| trained")]
    scores = [float(r[2]) for r in rows]
    assert [int(r[1]) for r in rows[:3]] == [1, 4, 8]
    assert scores[0] < scores[1] < scores[2] and scores[2] > 0.999  # all 8 components: a lossless code
    assert rows[3][0].strip().startswith("trained:") and 0 < scores[3] < 1


def test_linear_autoencoder_benchmark_refuses_more_components_than_a_block_holds(packs):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import linear_autoencoder

    with pytest.raises(SystemExit) as exc:
        linear_autoencoder.main(["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--channels", "9"])
    assert exc.value.code == 2


def test_denoise_by_timestep_benchmark_prints_one_row_per_timestep(packs, trained, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import denoise_by_timestep

    assert denoise_by_timestep.main(["--val-pack", str(packs[1]), "--bundle", str(trained["bundle"]),
                                     "--limit", "2", "--timesteps", "5", "400"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| t ") and not line.startswith("| ---")]
    assert [int(r[0]) for r in rows] == [5, 400]
    mse, mse_other, effect, estimate, undenoised, oracle = ([float(r[i]) for r in rows] for i in (2, 3, 4, 5, 6, 7))
    assert all(o > 0.99 for o in oracle)  # the formula with the true noise gives the latent back
    assert undenoised[1] < undenoised[0] <= 1.0  # more noise left in, further from the reconstruction
    assert all(m > 0 for m in mse) and all(0 < e <= 1 for e in estimate)
    # the other sites' prototypes differ from the own one, so the prediction moves (the tiny pack has 2+ sites)
    assert all(m > 0 for m in mse_other) and all(e > 0 for e in effect)


def test_set_site_spectra_writes_each_sites_spectrum_and_checks_the_inference_keys(packs, trained, tmp_path):
    import shutil

    import set_site_spectra

    from hcld_bids.model import Harmonizer, load_bundle
    from hcld_bids.model.spectrum import band_power

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    before = json.loads((bundle / "manifest.json").read_text())
    for entry in before["sites"].values():  # a bundle made before the spectral calibration
        entry.pop("power_spectrum")
    (bundle / "manifest.json").write_text(json.dumps(before))
    assert set_site_spectra.main(["--bundle", str(bundle), "--pack", str(packs[0]),
                                  "--inference", "spectrum=1.0"]) == 0
    after = json.loads((bundle / "manifest.json").read_text())
    vols, masks, sites, _ = train_demo.load_pack(packs[0])
    for site in ("siteA", "siteB"):
        expected = np.mean([band_power(v, m) for v, m, s in zip(vols, masks, sites) if s == site], axis=0)
        np.testing.assert_allclose(after["sites"][site]["power_spectrum"], expected, rtol=1e-5)
        assert after["sites"][site]["intensity_histogram"] == before["sites"][site]["intensity_histogram"]
    assert after["inference"] == {**before["inference"], "spectrum": 1.0} and after["weights"] == before["weights"]
    assert Harmonizer(load_bundle(bundle)).default_regime.spectrum == 1.0
    with pytest.raises(SystemExit, match="unknown inference settings"):
        set_site_spectra.main(["--bundle", str(bundle), "--pack", str(packs[0]), "--inference", "sharpen=2"])
    with pytest.raises(SystemExit, match="no images of the bundle's sites siteB"):
        set_site_spectra.main(["--bundle", str(bundle), "--pack", str(_pack(tmp_path / "a", sites=("siteA",)))])


def test_refresh_site_styles_replaces_prototypes_histograms_and_spectra_and_keeps_the_networks(packs, trained,
                                                                                               tmp_path):
    import refresh_site_styles

    from hcld_bids.model import load_bundle
    from hcld_bids.model.prototypes import compute_site_prototype
    from hcld_bids.model.spectrum import band_power

    out, pack = tmp_path / "new", _pack(tmp_path / "redone", seed=1)  # the same heads rendered again
    assert refresh_site_styles.main(["--bundle", str(trained["bundle"]), "--pack", str(pack), "--out", str(out)]) == 0
    before, after = load_bundle(trained["bundle"]), load_bundle(out)
    base = json.loads((pack / "manifest_base.json").read_text())["sites"]
    vols, masks, sites, _ = train_demo.load_pack(pack)
    assert all(after.weights_sha256[f"{k}.safetensors"] == before.weights_sha256[f"{k}.safetensors"]
               for k in ("autoencoder", "unet"))
    assert after.weights_sha256["prototypes.safetensors"] != before.weights_sha256["prototypes.safetensors"]
    for site in ("siteA", "siteB"):
        entry = after.manifest["sites"][site]
        assert entry["intensity_histogram"] == base[site]["intensity_histogram"]
        assert entry["intensity_histogram"] != before.manifest["sites"][site]["intensity_histogram"]
        expected = np.mean([band_power(v, m) for v, m, s in zip(vols, masks, sites) if s == site], axis=0)
        np.testing.assert_allclose(entry["power_spectrum"], expected, rtol=1e-5)
        proto = compute_site_prototype(before.autoencoder, [v for v, s in zip(vols, sites) if s == site],
                                       before.scale_factor)
        torch.testing.assert_close(after.prototype(site).latent, proto.latent)
        assert not torch.equal(after.prototype(site).latent, before.prototype(site).latent)
    with pytest.raises(SystemExit, match="exists"):
        refresh_site_styles.main(["--bundle", str(trained["bundle"]), "--pack", str(pack), "--out", str(out)])
    with pytest.raises(SystemExit, match="no images of the bundle's sites siteB"):
        refresh_site_styles.main(["--bundle", str(trained["bundle"]), "--out", str(tmp_path / "other"),
                                  "--pack", str(_pack(tmp_path / "a", sites=("siteA",)))])
    assert not (tmp_path / "other").exists()


def test_train_restoration_resumes_refuses_another_network_and_adds_itself_to_a_bundle(packs, trained, tmp_path):
    import shutil

    import train_restoration

    from hcld_bids.model import load_bundle

    state = tmp_path / "restore"
    common = ["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--state", str(state), "--steps", "4",
              "--channels", "4", "--blocks", "1", "--patch", "16", "--eval-every", "2", "--val-limit", "1",
              "--threads", "1"]
    assert train_restoration.main(common + ["--minutes", "0"]) == 0  # stops before the first step, state saved
    assert train_restoration.main(common) == 0
    rows = _rows(state / "curve.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(0 < float(r["val_restored"]) <= 1 for r in rows)
    with pytest.raises(SystemExit, match="another network"):
        other = list(common)
        other[other.index("--channels") + 1] = "8"
        train_restoration.main(other)
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    assert train_restoration.main(common + ["--bundle", str(bundle)]) == 0  # resumes at step 4: nothing to do
    loaded = load_bundle(bundle)
    assert loaded.restoration is not None and loaded.manifest["restoration"]["training"]["steps"] == 4
    with pytest.raises(SystemExit, match="no image of site"):
        train_restoration.main(common + ["--clean-site", "siteZ"])
    (state / "checkpoint.safetensors").write_bytes(b"broken")
    with pytest.raises(SystemExit, match="remove the folder"):
        train_restoration.main(common)


def test_train_restoration_starts_from_another_state_once_and_resumes_its_own(packs, tmp_path):
    import train_restoration

    from hcld_bids.model.training.checkpoint import load_checkpoint

    base = ["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--channels", "4", "--blocks", "1",
            "--patch", "16", "--val-limit", "1", "--threads", "1", "--eval-every", "2"]
    assert train_restoration.main(base + ["--state", str(tmp_path / "first"), "--steps", "2"]) == 0
    first = load_checkpoint(tmp_path / "first")["weights"]
    tuned = base + ["--state", str(tmp_path / "tuned"), "--steps", "4", "--init-from", str(tmp_path / "first"),
                    "--ssim-weight", "0.8", "--minutes", "0"]
    assert train_restoration.main(tuned) == 0  # stops before its first step: the weights are the other state's
    payload = load_checkpoint(tmp_path / "tuned")
    assert payload["step"] == 0 and payload["config"]["ssim_weight"] == 0.8
    assert payload["config"]["init_from"]["steps"] == 2
    assert all(torch.equal(payload["weights"][k], first[k]) for k in first)
    assert train_restoration.main(tuned[:-2]) == 0  # resumes its own state (step 0), not the other one's
    assert load_checkpoint(tmp_path / "tuned")["step"] == 4
    with pytest.raises(SystemExit, match="no restoration state"):
        train_restoration.main(base + ["--state", str(tmp_path / "x"), "--init-from", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="another size"):
        other = base + ["--state", str(tmp_path / "y"), "--init-from", str(tmp_path / "first")]
        other[other.index("--channels") + 1] = "8"
        train_restoration.main(other)


def test_train_demo_bundles_the_restoration_prior_of_its_state(packs, trained, tmp_path):
    import shutil

    import train_restoration

    from hcld_bids.model import load_bundle

    state = tmp_path / "state"
    shutil.copytree(trained["state"], state)
    assert train_restoration.main(["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--state",
                                   str(state / "restoration"), "--steps", "2", "--channels", "4", "--blocks", "1",
                                   "--patch", "16", "--val-limit", "1", "--threads", "1"]) == 0
    assert train_demo.main(["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--state", str(state), "--tiny",
                            "--threads", "1", "--reserve-minutes", "0", "--minutes", "5",
                            "--bundle", str(tmp_path / "bundle")]) == 0
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.restoration is not None and bundle.restoration.config == {"channels": 4, "blocks": 1}
    assert bundle.manifest["restoration"]["training"]["steps"] == 2


@pytest.mark.slow
def test_train_demo_refuses_a_damaged_state_in_one_line(packs, trained, tmp_path, capsys):
    state = tmp_path / "state"
    shutil.copytree(trained["state"], state)
    checkpoint = state / "stage1" / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # killed while an older version wrote it in place
    code = train_demo.main(["--pack", str(packs[0]), "--val-pack", str(packs[1]), "--state", str(state), "--tiny",
                            "--threads", "1", "--reserve-minutes", "0", "--minutes", "1", "--bundle",
                            str(tmp_path / "bundle")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 65 and err[-1].startswith("train_demo.py: error:") and str(checkpoint) in err[-1], err
    assert "Traceback" not in "\n".join(err)
