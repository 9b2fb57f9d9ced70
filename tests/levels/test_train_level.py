"""The train level's checks that run before any preprocessing (cheap: they end the run first)."""

from __future__ import annotations

import json

import pytest

from hcld_bids.cli.run import main
from hcld_bids.config import DEMO_MODEL_DIR
from hcld_bids.testing import make_bids_dataset


def test_adding_prototypes_under_the_name_of_a_trained_site_is_an_error_naming_both(tmp_path, scans_dir, capsys):
    # the demo model was trained on siteA..siteD; "site A" becomes the label siteA
    bids = make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir, site_labels={"uih": "site A"})
    code = main([str(bids), str(tmp_path / "out"), "train", "--add-site-prototypes", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--nprocs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 65
    assert len(err) == 1 and err[0].startswith(
        "hcld-bids: error: the site 'site A' (participants.tsv) of sub-03/anat/sub-03_T1w.nii.gz has the label "
        "'siteA', which is a site the model ")
    trained = json.loads((DEMO_MODEL_DIR / "manifest.json").read_text())["training"]["data"]["sites"]
    assert f"was trained on ({trained['siteA']} images)" in err[0]
    assert not (tmp_path / "out" / "models").exists()


def test_added_sites_are_recorded_apart_from_the_training_data_and_the_methods_text_says_so(
        tmp_path, scans_dir, monkeypatch):
    import numpy as np

    from hcld_bids.cli.parser import build_parser
    from hcld_bids.cli.run import build_config, collect_inputs, prepare_directories
    from hcld_bids.levels import train
    from hcld_bids.reports.boilerplate import citation_context, render_markdown

    bids = make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir,
                             site_labels={"uih": "Boston", "philips": "Oslo", "siemens": "Oslo"})
    config = build_config(build_parser().parse_args([str(bids), str(tmp_path / "out"), "train",
                                                     "--add-site-prototypes", "-w", str(tmp_path / "w"),
                                                     "--skip-bids-validation", "--omp-nthreads", "1"]))
    prepare_directories(config)
    records = collect_inputs(config)
    shape = (80, 96, 80)  # the demo model's grid: no preprocessing needed to encode
    rng = np.random.default_rng(0)
    monkeypatch.setattr(train, "preprocess_for_training", lambda config, records, **_: (
        [rng.uniform(0, 1, shape).astype(np.float32) for _ in records], [np.ones(shape, bool) for _ in records]))
    assert train.add_site_prototypes(config, records) == 0

    demo = json.loads((DEMO_MODEL_DIR / "manifest.json").read_text())
    manifest = json.loads((tmp_path / "out" / "models" / "hcld" / "manifest.json").read_text())
    assert manifest["training"]["data"] == demo["training"]["data"]  # the training record is untouched
    for site, n in (("Boston", 1), ("Oslo", 2)):
        entry = manifest["sites"][site]
        assert entry["added_without_training"] is True and entry["n_images"] == n
        assert len(entry["power_spectrum"]) == 8 ** 3 and min(entry["power_spectrum"]) >= 0
    text = render_markdown(citation_context(config, manifest, target_site="Oslo", level="participant"))
    _assert_text_matches_manifest(text, manifest)
    # the harmonizer calibrates toward an added site by its heads (Oslo: 2 scans, 0.75), a trained site fully
    from hcld_bids.model import Harmonizer, load_bundle

    harmonizer = Harmonizer(load_bundle(tmp_path / "out" / "models" / "hcld"))
    regime = harmonizer.default_regime
    assert [harmonizer.style_from_site(s).calibration_images for s in ("Oslo", "Boston")] == [2, 1]
    assert harmonizer.style_from_site(sorted(demo["training"]["data"]["sites"])[0]).calibration_images is None
    assert regime.calibration_weight(2) == 0.75
    assert "with a weight of 0.75 on the mapped one (1 - 0.5 / n for a site added from n images" in " ".join(
        text.split())


def _assert_text_matches_manifest(text: str, manifest: dict) -> None:
    """The methods text's 'trained on' clause lists exactly the training record, and every other site of the
    manifest appears as an added prototype with its number of images, never among the trained ones."""
    import re

    text = " ".join(text.split())
    data = manifest["training"]["data"]
    added = {s for s, e in manifest["sites"].items() if e.get("added_without_training")}
    trained = {s: n for s, n in data["sites"].items() if s not in added}
    match = re.search(r"trained on (\d+) T1w images from (\d+) sites? \(([^)]*)\)", text)
    assert match, text
    listed = dict(pair.split(": ") for pair in match.group(3).split(", "))
    assert {s: int(n) for s, n in listed.items()} == trained
    assert int(match.group(1)) == sum(trained.values()) and int(match.group(2)) == len(trained)
    others = sorted(set(manifest["sites"]) - set(trained))
    if others:
        clause = re.search(r"Style prototypes of (.*?) were added to the model afterwards from images it was never "
                           r"trained on", text)
        assert clause, text
        for site in others:
            n = manifest["sites"][site]["n_images"]
            assert f"{site} ({n} image{'s' if n != 1 else ''})" in clause.group(1)
    else:
        assert "were added to the model afterwards" not in text


def _manifests():
    demo = json.loads((DEMO_MODEL_DIR / "manifest.json").read_text())
    first = sorted(demo["training"]["data"]["sites"])[0]
    added = json.loads(json.dumps(demo))
    added["sites"]["Boston"] = {"n_images": 1, "added_without_training": True}
    added["sites"]["Oslo"] = {"n_images": 2, "added_without_training": True}
    replaced = json.loads(json.dumps(added))  # a training site whose prototype was later recomputed
    replaced["sites"][first].update(n_images=5, added_without_training=True)
    return {"demo": demo, "added": added, "replaced": replaced}


@pytest.mark.parametrize("name", ["demo", "added", "replaced"])
@pytest.mark.parametrize("level", ["participant", "train"])
def test_methods_text_holds_to_the_manifest(name, level):
    from hcld_bids.reports.boilerplate import citation_context, render_markdown

    manifest = _manifests()[name]
    text = render_markdown(citation_context(None, manifest, target_site="Oslo", level=level))
    if level == "participant":
        _assert_text_matches_manifest(text, manifest)
    else:  # the training section describes the training data only
        match = __import__("re").search(r"trained with hcld-bids on (\d+) preprocessed T1w images from (\d+)\s+sites",
                                        " ".join(text.split()))
        added = {s for s, e in manifest["sites"].items() if e.get("added_without_training")}
        trained = {s: n for s, n in manifest["training"]["data"]["sites"].items() if s not in added}
        assert match and int(match.group(1)) == sum(trained.values()) and int(match.group(2)) == len(trained)


def test_methods_text_of_a_manifest_without_training_record_claims_no_training_data():
    from hcld_bids.reports.boilerplate import citation_context, render_markdown

    manifest = _manifests()["added"]
    del manifest["training"]
    text = " ".join(render_markdown(citation_context(None, manifest, level="participant")).split())
    assert not __import__("re").search(r"trained on \d+", text)
    assert "does not record the data it was trained on (it holds style prototypes of siteA, siteB" in text
    assert "Boston (1 image) and Oslo (2 images) were added to the model afterwards" in text
