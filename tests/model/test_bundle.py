import json
import os

import numpy as np
import pytest
import torch

from hcld_bids.model import (BundleError, BundleIntegrityError, BundleNotFoundError, BundleVersionError, NoiseSchedule,
                             add_prototypes, compute_site_prototype, load_bundle, save_bundle)
from hcld_bids.model.bundle import FORMAT_VERSION, bundle_digest

PREPROC = {"template": "MNI152NLin6Asym", "resolution": 2, "grid_shape": [16, 16, 16], "crop_start": [5, 6, 0],
           "intensity_scaling": {"method": "percentile", "low": 0.5, "high": 99.5}}


@pytest.fixture
def bundle_dir(tmp_path, tiny_models):
    ae, unet = tiny_models
    vols = [np.random.default_rng(i).random((16, 16, 16), dtype=np.float32) for i in range(3)]
    protos = {"siteA": compute_site_prototype(ae, vols[:2], 1.7), "site B/2": compute_site_prototype(ae, vols[2:], 1.7)}
    path = tmp_path / "bundle"
    save_bundle(path, ae, unet, 1.7, protos, {"preprocessing": PREPROC, "sites": {"siteA": {"n_images": 10}},
                                             "training": {"steps": 3}, "metrics": {"ssim": 0.9}})
    return path


def test_round_trip_is_bit_exact(bundle_dir, tiny_models):
    ae, unet = tiny_models
    b = load_bundle(bundle_dir)
    for mine, theirs in ((ae, b.autoencoder), (unet, b.unet)):
        sd = theirs.state_dict()
        for k, v in mine.state_dict().items():
            assert torch.equal(v, sd[k]), k
    assert b.autoencoder.config == ae.config and b.unet.config == unet.config
    assert b.scale_factor == 1.7
    assert b.schedule.config == NoiseSchedule().config
    assert sorted(b.prototypes) == ["site B/2", "siteA"]
    assert b.prototype_stats["siteA"]["count"] == 2 and b.prototypes["siteA"].shape == (1, 6, 4, 4, 4)


def test_manifest_records_what_the_product_needs(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and m["scale_factor"] == 1.7
    assert m["preprocessing"] == PREPROC and m["training"] == {"steps": 3} and m["metrics"] == {"ssim": 0.9}
    assert m["sites"]["siteA"]["n_images"] == 10 and m["sites"]["siteA"]["prototype"]["n_images"] == 2
    assert set(m["weights"]) == {"autoencoder.safetensors", "unet.safetensors", "prototypes.safetensors"}
    assert {"torch", "hcld_bids"} <= set(m["versions"])
    b = load_bundle(bundle_dir)
    assert b.sha256 == bundle_digest(m["weights"]) == m["sha256"] and len(b.sha256) == 64


def test_tampered_weight_file_is_refused(bundle_dir):
    f = bundle_dir / "unet.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="unet.safetensors.*sha256"):
        load_bundle(bundle_dir)


def test_newer_format_version_is_a_clear_error(bundle_dir):
    mpath = bundle_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = FORMAT_VERSION + 1
    mpath.write_text(json.dumps(m))
    with pytest.raises(BundleVersionError, match="upgrade hcld-bids"):
        load_bundle(bundle_dir)


def test_missing_bundle_and_missing_weight_file_are_not_found_errors(bundle_dir, tmp_path):
    with pytest.raises(BundleNotFoundError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    os.remove(bundle_dir / "autoencoder.safetensors")
    with pytest.raises(BundleNotFoundError, match="autoencoder.safetensors"):
        load_bundle(bundle_dir)


def test_broken_manifest_is_a_one_line_bundle_error(bundle_dir):
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_dir)
    assert "manifest.json" in str(err.value) and "\n" not in str(err.value)


def test_weights_that_do_not_fit_the_configuration_are_refused(bundle_dir):
    mpath = bundle_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    m["unet"]["config"]["channels"] = [16, 16, 16]
    mpath.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(bundle_dir)


def test_loading_never_unpickles(bundle_dir, monkeypatch):
    import pickle

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    load_bundle(bundle_dir)


def test_saving_is_atomic_and_refuses_to_overwrite(bundle_dir, tiny_models):
    ae, unet = tiny_models
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(bundle_dir, ae, unet, 1.0)
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]  # no temporary directory left behind
    save_bundle(bundle_dir, ae, unet, 2.5, overwrite=True)
    assert load_bundle(bundle_dir).scale_factor == 2.5
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]


def test_add_prototypes_adds_a_site_without_touching_the_networks(bundle_dir):
    before = load_bundle(bundle_dir)
    vols = [np.full((16, 16, 16), 0.3, np.float32), np.full((16, 16, 16), 0.5, np.float32)]
    after = add_prototypes(bundle_dir, {"siteC": vols})
    assert sorted(after.prototypes) == ["site B/2", "siteA", "siteC"]
    assert after.prototype_stats["siteC"]["count"] == 2
    torch.testing.assert_close(after.prototypes["siteA"], before.prototypes["siteA"], rtol=0, atol=0)
    assert after.weights_sha256["unet.safetensors"] == before.weights_sha256["unet.safetensors"]
    assert after.manifest["preprocessing"] == PREPROC
    with pytest.raises(BundleError, match="already have prototypes"):
        add_prototypes(bundle_dir, {"siteC": vols})


def test_preprocessing_mismatch_is_reported(bundle_dir):
    b = load_bundle(bundle_dir)
    b.check_preprocessing({"template": "MNI152NLin6Asym", "resolution": 2})
    with pytest.raises(BundleError, match="grid_shape"):
        b.check_preprocessing({"grid_shape": [80, 96, 80]})
