"""The participant level end to end: real scans, real preprocessing, a model trained by the train level."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.bids.validation import find_validator, run_validator
from hcld_bids.cli.run import main
from hcld_bids.testing import hash_tree

from .conftest import COMMON

pytestmark = pytest.mark.slow

TPL = "MNI152NLin6Asym"
SITES = {"01": "philips", "02": "siemens", "03": "uih"}
STEPS = ["--ddim-inversion-steps", "4", "--ddim-sampling-steps", "2"]


def _files(sub: str) -> dict[str, str]:
    prefix = f"sub-{sub}/anat/sub-{sub}"
    return {
        "preproc": f"{prefix}_space-{TPL}_res-2_desc-preproc_T1w",
        "mask": f"{prefix}_space-{TPL}_res-2_desc-brain_mask",
        "harmonized": f"{prefix}_space-{TPL}_res-2_desc-harmonized_T1w",
        "native": f"{prefix}_desc-harmonized_T1w",
    }


#: --mem of the participant run: room for one harmonization of the tiny model (0.7 GB) but not for two
MEM_GB = 1.0


@pytest.fixture(scope="module")
def participant(trained):
    """Participant level toward siemens, template and native outputs, into the train level's OUTPUT_DIR."""
    code = main([str(trained.bids), str(trained.out), "participant", "--target-site", "siemens",
                 "--output-spaces", TPL, "T1w", "-w", str(trained.work), *COMMON, *STEPS, "--mem", str(MEM_GB)])
    assert code == 0
    trained.preproc_after_participant = {p: p.stat().st_mtime_ns for p in trained.preproc_results}
    return trained


def test_train_level_writes_a_bundle_with_every_site_and_its_histogram(trained):
    manifest = trained.manifest
    assert sorted(manifest["sites"]) == ["philips", "siemens", "uih"]
    for site, entry in manifest["sites"].items():
        assert entry["n_images"] == 1
        hist = entry["intensity_histogram"]
        assert len(hist["edges"]) == len(hist["density"]) + 1
        assert hist["edges"][0] == 0.0 and hist["edges"][-1] == 1.0
        assert len(entry["power_spectrum"]) == 8 ** 3 and entry["power_spectrum"][0] > 0  # the DC band
    assert manifest["preprocessing"]["template"] == TPL
    assert manifest["preprocessing"]["grid"]["shape"] == [80, 96, 80]
    assert manifest["training"]["data"] == {"n_images": 3, "n_participants": 3,
                                            "sites": {"philips": 1, "siemens": 1, "uih": 1}}
    assert manifest["autoencoder"]["config"]["channels"] == [8, 8, 8]


def test_every_output_file_is_written_with_its_sidecar(participant):
    out = participant.out
    for sub in SITES:
        for kind, stem in _files(sub).items():
            assert (out / f"{stem}.nii.gz").is_file(), stem
            assert (out / f"{stem}.json").is_file(), stem
        assert (out / f"sub-{sub}/anat/sub-{sub}_from-T1w_to-{TPL}_mode-image_xfm.txt").is_file()
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]
    assert leftovers == []


def test_template_space_outputs_are_on_the_template_grid(participant, templateflow_home):
    template = nib.load(templateflow_home / f"tpl-{TPL}" / f"tpl-{TPL}_res-02_T1w.nii.gz")
    for sub in SITES:
        files = _files(sub)
        images = {k: nib.load(participant.out / f"{files[k]}.nii.gz") for k in ("preproc", "mask", "harmonized")}
        for kind, img in images.items():
            assert img.shape == template.shape, kind
            assert np.allclose(img.affine, template.affine, atol=1e-4), kind
        mask = np.asarray(images["mask"].dataobj)
        assert images["mask"].get_data_dtype() == np.uint8 and set(np.unique(mask)) == {0, 1}
        harmonized = images["harmonized"].get_fdata()
        preproc = images["preproc"].get_fdata()
        assert harmonized.min() >= 0 and harmonized.max() <= 1
        assert preproc.min() >= 0 and preproc.max() <= 1
        assert np.all(harmonized[mask == 0] == 0)
        assert harmonized[mask == 1].std() > 0


def test_native_output_is_on_the_input_grid(participant):
    for sub in SITES:
        source = nib.as_closest_canonical(nib.load(participant.bids / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz"))
        native = nib.load(participant.out / f"{_files(sub)['native']}.nii.gz")
        assert native.shape == source.shape
        assert np.allclose(native.affine, source.affine, atol=1e-3)
        assert native.get_fdata().max() > 0


def test_harmonized_sidecar_records_the_provenance(participant):
    manifest = participant.manifest
    for sub, site in SITES.items():
        meta = json.loads((participant.out / f"{_files(sub)['harmonized']}.json").read_text())
        assert meta["SkullStripped"] is True
        assert meta["Sources"] == [
            f"bids:raw:sub-{sub}/anat/sub-{sub}_T1w.nii.gz",
            f"bids::{_files(sub)['preproc']}.nii.gz",
        ]
        hcld = meta["HCLD"]
        assert hcld["ModelSHA256"] == manifest["sha256"]
        assert hcld["ModelPath"] == str(participant.model)
        assert hcld["SourceSite"] == site and hcld["SiteSource"] == "participants.tsv"
        assert hcld["TargetSite"] == "siemens" and hcld["ReferenceImage"] is None
        assert hcld["StylePrototype"] == "site:siemens"
        assert (hcld["DDIMInversionSteps"], hcld["DDIMSamplingSteps"]) == (4, 2)
        assert hcld["RandomSeed"] == 0 and hcld["Device"] == "cpu"
        assert "SloppyPreprocessing" not in hcld  # only runs with --sloppy carry it
        assert hcld["IntensityScaling"]["high"] > hcld["IntensityScaling"]["low"]
        walltime = hcld["WallTimeSeconds"]
        assert set(walltime) >= {"harmonization", "encode", "inversion", "sampling", "decode", "preprocessing"}
        # N4 and the registration alone take more than the harmonization of a tiny model
        assert walltime["preprocessing"] > walltime["harmonization"] > 0
        assert set(hcld["Versions"]) >= {"hcld-bids", "torch", "python"}
        assert set(meta["QC"]) >= {"WassersteinInputToTarget", "WassersteinOutputToTarget",
                                   "StructurePreservation", "Flags"}
        preproc = json.loads((participant.out / f"{_files(sub)['preproc']}.json").read_text())
        assert preproc["SkullStripped"] is False
        assert preproc["Sources"] == [f"bids:raw:sub-{sub}/anat/sub-{sub}_T1w.nii.gz"]


def test_input_dataset_is_untouched(participant):
    assert hash_tree(participant.bids) == participant.bids_hash


def test_outputs_pass_the_bids_validator(participant, tmp_path):
    validator = find_validator()
    if validator is None:
        pytest.skip("bids-validator-deno is not installed")
    result = run_validator(participant.out, tmp_path / "report.json", validator)
    assert result.errors == []


def _harmonize_results(work: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in work.glob("hcld_bids_wf/sub_*_wf/t1w_wf/harmonization_wf/harmonize/"
                                                         "result_harmonize.pklz")}


def test_rerun_recomputes_nothing_and_rewrites_identical_files(participant):
    before = _harmonize_results(participant.work)
    assert len(before) == 3
    outputs = {p: p.read_bytes() for p in participant.out.glob("sub-*/anat/*.nii.gz")}
    code = main([str(participant.bids), str(participant.out), "participant", "--target-site", "siemens",
                 "--output-spaces", TPL, "T1w", "-w", str(participant.work), *COMMON, *STEPS])
    assert code == 0
    assert _harmonize_results(participant.work) == before
    assert {p: p.read_bytes() for p in participant.out.glob("sub-*/anat/*.nii.gz")} == outputs


def test_mem_never_lets_more_harmonizations_run_at_once_than_fit(participant):
    from datetime import datetime

    from nipype.utils.filemanip import loadpkl

    from hcld_bids.levels.model import open_model

    need = open_model(participant.model).mem_gb
    assert need <= MEM_GB < 2 * need  # one fits, two do not (and --nprocs 2 would otherwise run two)
    spans = sorted((datetime.fromisoformat(r.runtime.startTime), datetime.fromisoformat(r.runtime.endTime))
                   for r in map(loadpkl, _harmonize_results(participant.work)))
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans


def test_participant_reuses_the_preprocessing_of_the_train_level(participant):
    # the train level ran first in the same work directory: no anatomical node ran again
    assert len(participant.preproc_results) >= 3 * 10
    assert participant.preproc_after_participant == participant.preproc_results


def test_participant_level_writes_reports_and_the_methods_boilerplate(participant):
    out = participant.out
    for sub in SITES:
        html = (out / f"sub-{sub}.html").read_text()
        assert f"sub-{sub}" in html and "harmonized" in html.lower()
        assert any(f.stat().st_size > 1000 for f in (out / f"sub-{sub}" / "figures").iterdir())
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "siemens" in citation and "DDIM" in citation
    assert (out / "logs" / "CITATION.bib").read_text().count("@") >= 2
    assert not list(out.rglob("*.tmp*")) and not list(out.rglob(".*.part"))


def test_group_level_tabulates_every_harmonized_image(participant):
    code = main([str(participant.bids), str(participant.out), "group", "-w", str(participant.work), *COMMON])
    assert code == 0
    table = (participant.out / "group_T1w.tsv").read_text().splitlines()
    header = table[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in table[1:]]
    assert sorted(r["site"] for r in rows) == sorted(SITES.values())
    assert {r["target"] for r in rows} == {"siemens"}
    assert "<html" in (participant.out / "group_report.html").read_text().lower()
    assert hash_tree(participant.bids) == participant.bids_hash


def test_boilerplate_only_writes_the_citation_and_nothing_else(trained, tmp_path):
    out = tmp_path / "out"
    code = main([str(trained.bids), str(out), "participant", "--target-site", "uih", "--model", str(trained.model),
                 "--boilerplate-only", "-w", str(tmp_path / "work"), *COMMON])
    assert code == 0
    assert (out / "logs" / "CITATION.md").is_file() and "uih" in (out / "logs" / "CITATION.md").read_text()
    assert not list(out.glob("sub-*"))


def test_group_level_without_participant_outputs_exits_18(trained, tmp_path):
    code = main([str(trained.bids), str(tmp_path / "empty"), "group", "-w", str(tmp_path / "work"), *COMMON])
    assert code == 18


def test_the_batched_graph_of_cuda_gives_every_image_what_its_own_node_gives(participant, tmp_path, monkeypatch):
    """The CUDA graph (one batch node per participant, then each image's steps) run on the CPU: the same
    harmonized images and sidecars as the CPU graph, the preprocessing taken from the same work directory."""
    from nipype.utils.filemanip import loadpkl

    from hcld_bids.workflows import harmonization

    monkeypatch.setattr(harmonization, "batches_harmonization", lambda device: True)
    out = tmp_path / "batched"
    code = main([str(participant.bids), str(out), "participant", "--target-site", "siemens", "--output-spaces", TPL,
                 "T1w", "-w", str(participant.work), "--model", str(participant.model), *COMMON, *STEPS,
                 "--participant-label", "01"])
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in participant.preproc_results} == participant.preproc_after_participant
    for sub in ("01",):
        batch = loadpkl(next((participant.work / "hcld_bids_wf" / f"sub_{sub}_wf" / "harmonize_batch_wf" / "harmonize")
                             .glob("result_*.pklz")))
        assert len(batch.outputs.out_files) == 1 and batch.outputs.device == "cpu"
        for kind in ("harmonized", "native"):
            name = _files(sub)[kind] + ".nii.gz"
            assert np.array_equal(nib.load(out / name).get_fdata(), nib.load(participant.out / name).get_fdata())
        sidecars = [json.loads((root / (_files(sub)["harmonized"] + ".json")).read_text())["HCLD"]
                    for root in (out, participant.out)]
        for sidecar in sidecars:
            sidecar.pop("RunUUID"), sidecar.pop("WallTimeSeconds")
        assert sidecars[0] == sidecars[1]
    assert (out / "sub-01.html").is_file()
