"""Methods boilerplate: the numbers of the run in the text, every citation in the .bib, three files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hcld_bids.config import Config, ExecutionConfig, WorkflowConfig
from hcld_bids.reports import boilerplate

MANIFEST = {
    "name": "ixi-4site",
    "sha256": "3f2a9c" + "0" * 58,
    "autoencoder": {"config": {"channels": [16, 32, 32], "latent_channels": 6, "num_res_blocks": 2}},
    "unet": {"config": {"channels": [32, 64, 64], "num_res_blocks": 1}},
    "noise_schedule": {"num_train_timesteps": 1000},
    "sites": {"siteA": {"n_images": 30}, "siteB": {"n_images": 28}, "siteC": {"prototype": {"n_images": 31}}},
    "training": {"data": {"n_images": 89, "n_participants": 89, "sites": {"siteA": 30, "siteB": 28, "siteC": 31}}},
    "preprocessing": {"template": "MNI152NLin6Asym", "resolution": 2, "grid_shape": [80, 96, 80]},
}
REQUIRED_REFERENCES = ("hcld", "nipype", "pybids", "templateflow", "ants_syn", "ants_metrics", "n4",
                       "mni152nlin6asym", "pytorch", "ddim", "ldm", "adain")


def _config(tmp_path, level="participant", **workflow) -> Config:
    execution = ExecutionConfig(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level=level,
                                work_dir=tmp_path / "work")
    return Config(execution=execution, workflow=WorkflowConfig(**workflow))


@pytest.fixture()
def participant_context(tmp_path):
    config = _config(tmp_path, target_site="siteB", ddim_inversion_steps=25, ddim_sampling_steps=7,
                     random_seed=42, model_source="argument")
    return boilerplate.citation_context(config, MANIFEST, device="cuda:0")


def test_write_citation_writes_markdown_bibtex_and_html_into_logs(tmp_path, participant_context):
    paths = boilerplate.write_citation(tmp_path, participant_context)
    assert paths == {ext: tmp_path / "logs" / f"CITATION.{ext}" for ext in ("md", "bib", "html")}
    assert all(path.stat().st_size > 500 for path in paths.values())
    assert not list((tmp_path / "logs").glob(".tmp-*"))


def test_methods_text_carries_the_settings_of_the_run(participant_context):
    text = boilerplate.render_markdown(participant_context)
    versions = participant_context["versions"]
    for fragment in ("MNI152NLin6Asym", "2 mm isotropic", "0.5th and 99.5th percentiles", "80 x 96 x 80",
                     'site "siteB"', "(n = 28)", "25 deterministic DDIM steps", "7 DDIM sampling steps",
                     'was "ixi-4site" (SHA-256 of its weights 3f2a9c000000...)', "89 T1w images from 3 sites", "siteC: 31",
                     "16, 32 and 32 feature channels", "4-fold downsampling", "6 latent channels",
                     "1000-step noise schedule", "a CUDA GPU (cuda:0)", "random seed 42",
                     f"hcld-bids {versions['hcld-bids']}", f"Nipype {versions['nipype']}",
                     f"PyBIDS {versions['pybids']}", f"TemplateFlow {versions['templateflow']}",
                     f"PyTorch {versions['torch']}", f"Python {versions['python']}"):
        assert fragment in text, fragment
    assert "Training of the harmonization model" not in text
    assert "None" not in text and "{{" not in text
    assert not any("  " in line or " ." in line or " ," in line for line in text.splitlines())


def test_methods_text_cites_the_method_and_the_tools(participant_context):
    text = boilerplate.render_markdown(participant_context)
    for citation in ("(Wu et al., 2024)", "(Tustison et al., 2010)", "(Evans et al., 2012)", "(Ciric et al., 2022)",
                     "(Avants et al., 2008; Avants et al., 2011)", "(Song et al., 2021)", "(Rombach et al., 2022)",
                     "(Huang and Belongie, 2017)", "(Paszke et al., 2019)", "(Gorgolewski et al., 2011)",
                     "(Yarkoni et al., 2019)"):
        assert citation in text, citation


def test_bibtex_file_holds_exactly_the_cited_references(participant_context):
    bib = boilerplate.parse_bibtex(boilerplate.render_bibtex(participant_context))
    assert set(REQUIRED_REFERENCES) <= set(bib)
    markdown = boilerplate.render_markdown(participant_context)
    references = markdown.split("## References")[1]
    assert len(re.findall(r"^\d+\. ", references, flags=re.M)) == len(bib)


def test_every_bibliography_entry_is_complete():
    for key, ref in boilerplate.bibliography().items():
        assert {"author", "title", "year"} <= set(ref.fields), key
        assert ref.fields.get("doi") or ref.fields.get("url"), key
        assert re.fullmatch(r"(19|20)\d\d", ref.year), key
        assert ref.fields.get("journal") or ref.fields.get("booktitle") or ref.fields.get("eprint"), key


def test_the_hcld_paper_reference_is_right():
    ref = boilerplate.bibliography()["hcld"]
    assert ref.authors == ["Wu", "Yu", "Jing", "Yap", "Zhang", "Liu"]
    assert ref.fields["eprint"] == "2408.09315" and ref.year == "2024"
    assert "Conditional Latent Diffusion" in ref.fields["title"]


def test_train_level_describes_training_instead_of_harmonization(tmp_path):
    context = boilerplate.citation_context(_config(tmp_path, level="train"), MANIFEST)
    text = boilerplate.render_markdown(context)
    assert "## Training of the harmonization model" in text and "## Harmonization\n" not in text
    for fragment in ("for 30 epochs", "for 80 epochs", "content loss (weight 10)", "style loss (weight 10)",
                     "image-gradient loss inside the brain (weight 10000)", "from epoch 5 on"):
        assert fragment in text, fragment
    assert "DDIM sampling steps" not in text


def test_reference_image_replaces_the_target_site(tmp_path):
    config = _config(tmp_path, reference_image=Path("/data/ref_T1w.nii.gz"))
    text = boilerplate.render_markdown(boilerplate.citation_context(config, MANIFEST))
    assert "style of one reference image (/data/ref_T1w.nii.gz)" in text and "site \"" not in text


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_methods_text_says_when_the_calibration_is_partial(tmp_path, weight):
    inference = {"kind": "dual", "strength": 0.1, "inversion_steps": 10, "sampling_steps": 10, "detail": 0.75,
                 "calibrate": True, "reference_calibration": weight}
    manifest = dict(MANIFEST, inference=inference)
    ref = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, reference_image=Path("/data/ref_T1w.nii.gz")), manifest)).split())
    site = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, target_site="siteA"), manifest)).split())
    assert "mapped by quantiles onto the target's" in ref and "mapped by quantiles onto the target's" in site
    assert ("with a weight of 0.5 on the mapped one" in ref) == (weight < 1)
    assert "blended" not in site  # a trained site: full


@pytest.mark.parametrize("reference_detail", [None, 1.0])
def test_methods_text_description_and_sidecar_give_the_detail_gain_of_the_target(tmp_path, reference_detail):
    from hcld_bids.workflows.base import _regime_provenance
    from hcld_bids.workflows.harmonization import regime_description

    inference = {"kind": "dual", "strength": 0.1, "inversion_steps": 10, "sampling_steps": 10, "detail": 0.75,
                 "calibrate": True, "reference_calibration": 0.5}
    if reference_detail is not None:
        inference["reference_detail"] = reference_detail
    manifest = dict(MANIFEST, inference=inference,
                    sites={**MANIFEST["sites"], "siteV": {"n_images": 2, "added_without_training": True}})
    ref = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, reference_image=Path("/data/ref_T1w.nii.gz")), manifest)).split())
    site = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, target_site="siteA"), manifest)).split())
    added = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, target_site="siteV"), manifest)).split())
    toward_reference = 0.75 if reference_detail is None else 1.0
    # a site added without training from few images takes the reference's gain
    assert ("own reconstruction) was added back" in added) == (toward_reference == 1.0)
    assert ("times 0.75" in regime_description(inference, added_images=2)) == (toward_reference == 0.75)
    assert _regime_provenance(inference, target_images=2, target_added=True)["DetailReinjection"] == toward_reference
    assert "own reconstruction, times 0.75) was added back" in site
    assert ("own reconstruction, times 0.75) was added back" in ref) == (toward_reference == 0.75)
    assert ("own reconstruction) was added back" in ref) == (toward_reference == 1.0)
    assert ("times 0.75" in regime_description(inference, reference=True)) == (toward_reference == 0.75)
    assert "times 0.75" in regime_description(inference)
    assert _regime_provenance(inference)["DetailReinjection"] == 0.75
    assert _regime_provenance(inference, reference=True)["DetailReinjection"] == toward_reference


def test_text_without_a_manifest_leaves_unknown_numbers_out(tmp_path):
    text = boilerplate.render_markdown(boilerplate.citation_context(_config(tmp_path, target_site="A")))
    assert "None" not in text and "()" not in text and "had been trained" not in text and "The model was" not in text


def test_html_escapes_values_and_links_the_references(tmp_path):
    context = boilerplate.citation_context(_config(tmp_path, target_site="<b>site</b>"), MANIFEST)
    page = boilerplate.render_html(context)
    assert "&lt;b&gt;site&lt;/b&gt;" in page and "<b>site</b>" not in page
    assert 'href="#ref-hcld"' in page and 'id="ref-hcld"' in page
    assert 'href="https://doi.org/10.1038/s41592-022-01681-2"' in page


def test_boilerplate_dir_is_the_top_level_directory_in_a_source_checkout():
    assert boilerplate.boilerplate_dir().resolve() == Path(__file__).resolve().parents[2] / "boilerplate"


@pytest.mark.slow
def test_an_installed_package_writes_the_citation_from_its_own_copy(tmp_path):
    """``pip install . --target`` (no editable install) carries boilerplate/ into hcld_bids/data."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.rst", "boilerplate"):
        if (repo / name).is_dir():
            shutil.copytree(repo / name, source / name)
        elif (repo / name).exists():
            shutil.copy2(repo / name, source / name)
    shutil.copytree(repo / "hcld_bids", source / "hcld_bids", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", str(source), "--target", str(target), "--no-deps",
                    "--no-build-isolation", "--quiet"], check=True, capture_output=True, timeout=300)
    installed = target / "hcld_bids" / "data" / "boilerplate"
    assert not installed.is_symlink() and (installed / "references.bib").is_file()
    script = ("import sys; from hcld_bids.reports import boilerplate as b; "
              "print(b.boilerplate_dir()); b.write_citation(sys.argv[1], b.citation_context(target_site='X'))")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True, text=True,
                            cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""}, check=True, timeout=120)
    assert result.stdout.strip() == str(installed)
    assert "(Wu et al., 2024)" in (tmp_path / "out" / "logs" / "CITATION.md").read_text()


def test_citing_an_unknown_key_is_an_error(tmp_path, monkeypatch):
    citer = boilerplate._Citer(boilerplate.bibliography(), html_links=False)
    with pytest.raises(KeyError, match="nonexistent"):
        citer("nonexistent")


@pytest.mark.parametrize(("inference", "flags", "fragments"), [
    ({"kind": "sdedit", "strength": 0.3, "sampling_steps": 1, "detail": 1.0, "calibrate": True}, {},
     ["strength of 0.3", "SDEdit", "1 deterministic DDIM step", "estimate of the", "input minus its own reconstruction",
      "mapped by quantiles onto the target's", "mean histogram of the site's images stored with the model"]),
    ({"kind": "sdedit", "strength": 0.3, "sampling_steps": 1}, {"harmonization_strength": 0.5},
     ["strength of 0.5"]),
    ({"kind": "dual", "strength": 0.5, "inversion_steps": 10, "sampling_steps": 8}, {},
     ["10 deterministic", "own latent map", "8 DDIM steps conditioned on the target", "DDIB"]),
    ({"kind": "dual", "strength": 0.3, "guidance": 2.0, "guidance_source": "site"}, {},
     ["guided away from the source's style with a weight of 2.0", "trained site nearest to the source",
      "classifier-free guidance"]),
    (None, {}, ["30 deterministic DDIM steps", "10 DDIM sampling steps"]),
])
def test_methods_text_says_which_inference_regime_ran(tmp_path, inference, flags, fragments):
    manifest = dict(MANIFEST, autoencoder={"config": {"channels": [32], "latent_channels": 4, "patch_size": 2}})
    if inference is not None:
        manifest["inference"] = inference
    config = _config(tmp_path, target_site="siteB", **flags)
    text = " ".join(boilerplate.render_markdown(boilerplate.citation_context(config, manifest)).split())
    for fragment in fragments:
        assert fragment in text, fragment
    assert "2-fold downsampling" in text and "space-to-depth" in text
    if inference is None or inference["kind"] != "sdedit":
        assert "SDEdit" not in text
    if not (inference or {}).get("calibrate"):
        assert "quantiles" not in text
    assert ("guided away" in text) is bool((inference or {}).get("guidance"))


@pytest.mark.parametrize("linear_skip", [True, False])
def test_methods_text_says_when_the_autoencoder_has_a_linear_path(tmp_path, linear_skip):
    ae = {"channels": [32], "latent_channels": 4, "patch_size": 2, **({"linear_skip": True} if linear_skip else {})}
    manifest = dict(MANIFEST, autoencoder={"config": ae})
    text = " ".join(boilerplate.render_markdown(boilerplate.citation_context(_config(tmp_path, target_site="siteB"),
                                                                             manifest)).split())
    assert ("principal components of the training images' voxel blocks" in text) is linear_skip
    assert "None" not in text and "{{" not in text and " ," not in text


@pytest.mark.parametrize("spectrum", [0.0, 1.0, 1.5])
def test_methods_text_and_sidecar_say_when_the_spectrum_is_calibrated(tmp_path, spectrum):
    from hcld_bids.workflows.base import _regime_provenance
    from hcld_bids.workflows.harmonization import regime_description

    inference = {"kind": "dual", "strength": 0.1, "inversion_steps": 10, "sampling_steps": 10, "detail": 0.75,
                 "calibrate": True, "reference_calibration": 0.5, "spectrum": spectrum}
    manifest = dict(MANIFEST, inference=inference)
    site = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, target_site="siteA"), manifest)).split())
    ref = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, reference_image=Path("/data/ref_T1w.nii.gz")), manifest)).split())
    assert ("matched the target's power spectrum (the mean spectrum of the site's images stored" in site) \
        == (spectrum > 0)
    # toward one reference head the exponent is scaled by the reference calibration's weight; toward a site
    # by how many images its spectrum averages
    assert (f"(the reference image's own, with the gain raised to the power {spectrum * 0.5}" in ref) \
        == (spectrum > 0)
    assert (f"raised to the power {spectrum} x (1 - 0.5 / n) for a spectrum averaged over n images" in site) \
        == (spectrum > 0)
    assert ("power spectrum" in regime_description(inference)) == (spectrum > 0)
    assert (f"gain exponent {spectrum * 0.5:g}, as for one image" in regime_description(inference, reference=True)) \
        == (spectrum > 0)
    assert _regime_provenance(inference)["SpectralCalibration"] == spectrum * 0.5  # a site of one image
    assert _regime_provenance(inference, target_images=4)["SpectralCalibration"] == spectrum * 0.875
    assert _regime_provenance(inference, reference=True, target_images=4)["SpectralCalibration"] == spectrum * 0.5


def test_workflow_description_says_when_the_calibration_is_partial():
    from hcld_bids.workflows.harmonization import regime_description

    regime = {"kind": "adain", "strength": 1.0, "calibrate": True, "reference_calibration": 0.5}
    assert "weight 0.5 on the mapped one, as for one image" in regime_description(regime, reference=True)
    assert ("weight 0.75 on the mapped one for a site added from 2 images without training, 1 - 0.5 / n for n images"
            in regime_description(regime, added_images=2))
    assert "weight" not in regime_description(regime) and "quantiles" in regime_description(regime)  # trained site
    full = dict(regime, reference_calibration=1.0)  # bundles before the setting: full toward any target
    for kw in ({"reference": True}, {"added_images": 2}):
        text = regime_description(full, **kw)
        assert "weight" not in text and "blended" not in text and "quantiles" in text


@pytest.mark.parametrize("restore", [0.0, 0.5, 1.0])
def test_methods_text_description_and_sidecar_say_when_the_input_is_restored(tmp_path, restore):
    from hcld_bids.workflows.base import _regime_provenance
    from hcld_bids.workflows.harmonization import _desc

    inference = {"kind": "dual", "strength": 0.1, "inversion_steps": 10, "sampling_steps": 10, "detail": 0.75,
                 "calibrate": True, "reference_calibration": 0.5, "spectrum": 1.0, "restore": restore}
    text = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, target_site="siteA"), dict(MANIFEST, inference=inference))).split())
    assert ("noise and blur were removed from each image by the restoration network" in text) == (restore > 0)
    assert ("with a weight of 0.5" in text) == (restore == 0.5)
    assert "None" not in text and "{{" not in text and " ," not in text
    desc = _desc("siteA", inference)
    assert desc.startswith("The source scanner's noise and blur were first removed") == (restore > 0)
    assert ("correction weight 0.5" in desc) == (restore == 0.5)
    assert _regime_provenance(inference)["InputRestoration"] == restore


def test_methods_text_description_and_sidecar_say_when_the_restoration_weight_follows_the_noise(tmp_path):
    from hcld_bids.workflows.base import _provenance, _regime_provenance
    from hcld_bids.workflows.harmonization import _desc

    inference = {"kind": "dual", "strength": 0.1, "inversion_steps": 10, "sampling_steps": 10, "detail": 0.75,
                 "calibrate": True, "reference_calibration": 0.5, "spectrum": 1.0, "restore": 0.5,
                 "restore_noisy": 1.0, "noise_threshold": 0.0225}
    text = " ".join(boilerplate.render_markdown(boilerplate.citation_context(
        _config(tmp_path, target_site="siteA"), dict(MANIFEST, inference=inference))).split())
    assert "with a weight of 1.0 to images whose noise standard deviation" in text
    assert "exceeded 0.0225 of the intensity range, and of 0.5 to the others" in text
    assert "Donoho" in text and "scikit-image" in text
    assert "None" not in text and "{{" not in text and " ," not in text
    desc = _desc("siteA", inference)
    assert "(correction weight 1 for an image whose estimated noise exceeds 0.0225, 0.5 otherwise)" in desc
    # off for clean images, on for noisy ones: still described
    assert _desc("siteA", dict(inference, restore=0.0)).startswith("The source scanner's noise and blur")
    # the sidecar holds the weight each image got and its estimated noise
    static = _regime_provenance(inference)
    assert static["InputRestoration"] == 0.5 and static["Regime"]["restore_noisy"] == 1.0
    block = _provenance(static, "site:siteA", "cpu", 1.0, {"restore": 0.1}, 0.0, 1.0,
                        restoration={"weight": 1.0, "noise": 0.031234567})
    assert block["InputRestoration"] == 1.0 and block["InputNoiseEstimate"] == 0.03123
    fixed = _provenance(static, "site:siteA", "cpu", 1.0, {}, 0.0, 1.0, restoration={"weight": 0.5, "noise": None})
    assert fixed["InputRestoration"] == 0.5 and "InputNoiseEstimate" not in fixed


def test_methods_text_takes_calibration_figures_from_the_regime_not_its_own_arithmetic(tmp_path):
    """The template prints the figures that Regime computes (calibration weight, spectral exponents), rounded
    for reading, so that the text and the run cannot drift apart."""
    from hcld_bids.model.harmonize import Regime

    inference = {"kind": "dual", "strength": 0.1, "inversion_steps": 10, "sampling_steps": 10, "detail": 0.75,
                 "calibrate": True, "reference_calibration": 0.3, "spectrum": 1.5}
    regime = Regime.from_dict(inference)
    manifest = dict(MANIFEST, inference=inference,
                    sites={**MANIFEST["sites"], "siteV": {"n_images": 2, "added_without_training": True}})
    ref_context = boilerplate.citation_context(_config(tmp_path, reference_image=Path("/data/ref_T1w.nii.gz")),
                                               manifest)
    site_context = boilerplate.citation_context(_config(tmp_path, target_site="siteA"), manifest)
    added_context = boilerplate.citation_context(_config(tmp_path, target_site="siteV"), manifest)
    assert ref_context["calibration_weight"] == pytest.approx(regime.calibration_weight(1)) == 0.3
    assert ref_context["target_images"] == 1 and site_context["target_images"] == 30  # siteA's n_images
    assert site_context["calibration_weight"] == 1.0 and not site_context["target_added"]  # a trained site
    assert added_context["target_added"] and added_context["target_images"] == 2
    assert added_context["calibration_weight"] == pytest.approx(regime.calibration_weight(2)) == 0.65
    assert ref_context["spectrum_exponent_one_image"] == pytest.approx(regime.spectrum_exponent(1))
    # the site formulas in the text give Regime's weight and exponent for any number of heads
    share = site_context["head_share"]
    for n in (1, 7, 33):
        assert 1.5 * (1 - share / n) == pytest.approx(regime.spectrum_exponent(n))
        assert 1 - share / n == pytest.approx(regime.calibration_weight(n))  # a site added from n images
    ref = " ".join(boilerplate.render_markdown(ref_context).split())
    site = " ".join(boilerplate.render_markdown(site_context).split())
    assert "with the gain raised to the power 0.45, as one head's spectrum" in ref
    assert "with a weight of 0.3 on the mapped one" in ref
    assert "raised to the power 1.5 x (1 - 0.7 / n) for a spectrum averaged over n images" in site
    added = " ".join(boilerplate.render_markdown(added_context).split())
    assert "blended" not in site.split("intensity histogram")[1][:200]  # a trained site: full
    assert ("and blended with the unmapped image, with a weight of 0.65 on the mapped one (1 - 0.7 / n for a site "
            "added from n images without training, here 2,") in added
