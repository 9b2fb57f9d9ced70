"""The DerivativesDataSink: exact names and sidecars, atomic publication, a valid derivatives dataset."""

import json
import os
import subprocess

import nibabel as nb
import numpy as np
import pytest

from hcld_bids.bids.derivatives import init_derivatives_dataset
from hcld_bids.bids.sink import DerivativesDataSink, staging_prefix
from hcld_bids.bids.validation import find_validator

SPACE = "MNI152NLin6Asym"


@pytest.fixture
def volumes(tmp_path):
    """A float image and a 0/1 mask in the work directory, as a workflow would produce them."""
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = tmp_path / "work" / "harmonized.nii.gz"
    mask = tmp_path / "work" / "mask.nii.gz"
    image.parent.mkdir()
    nb.Nifti1Image(rng.random((8, 10, 8), dtype=np.float32), affine).to_filename(image)
    nb.Nifti1Image((rng.random((8, 10, 8)) > 0.5).astype(np.float32), affine).to_filename(mask)
    return image, mask


def _sink(output_dir, in_file, source_file, **inputs):
    sink = DerivativesDataSink(base_directory=str(output_dir), **inputs)
    sink.inputs.in_file = str(in_file)
    sink.inputs.source_file = str(source_file)
    return sink.run().outputs


def test_harmonized_image_name_and_sidecar(tmp_path, bids_sessions, volumes):
    out = tmp_path / "out"
    source = bids_sessions / "sub-01" / "ses-b" / "anat" / "sub-01_ses-b_run-2_T1w.nii.gz"
    outputs = _sink(
        out, volumes[0], source,
        bids_dir=str(bids_sessions), space=SPACE, desc="harmonized", suffix="T1w", compress=True,
        sources=[str(source), "bids::sub-01/ses-b/anat/sub-01_ses-b_run-2_space-MNI152NLin6Asym_desc-preproc_T1w.nii.gz"],
        provenance={"TargetSite": "siemens", "Seed": 0, "DDIMSteps": [30, 10]},
        SkullStripped=True,
    )
    expected = out / "sub-01" / "ses-b" / "anat" / f"sub-01_ses-b_run-2_space-{SPACE}_desc-harmonized_T1w.nii.gz"
    assert outputs.out_file == str(expected)
    assert outputs.out_meta == str(expected).replace(".nii.gz", ".json")
    assert json.loads(expected.with_name(expected.name.replace(".nii.gz", ".json")).read_text()) == {
        "Provenance": {"DDIMSteps": [30, 10], "Seed": 0, "TargetSite": "siemens"},
        "SkullStripped": True,
        "Sources": [
            "bids:raw:sub-01/ses-b/anat/sub-01_ses-b_run-2_T1w.nii.gz",
            "bids::sub-01/ses-b/anat/sub-01_ses-b_run-2_space-MNI152NLin6Asym_desc-preproc_T1w.nii.gz",
        ],
    }
    written = nb.load(expected)
    assert np.allclose(written.get_fdata(), nb.load(volumes[0]).get_fdata())
    # Template space: niworkflows marks the affine as MNI (code 4) and sets units.
    assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == (4, 4)
    assert sorted(p.name for p in out.iterdir()) == ["sub-01"]


def test_mask_is_written_as_uint8_without_sidecar_when_no_metadata(tmp_path, bids_participants, volumes):
    out = tmp_path / "out"
    source = bids_participants / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    outputs = _sink(out, volumes[1], source, space=SPACE, desc="brain", suffix="mask", compress=True)
    expected = out / "sub-02" / "anat" / f"sub-02_space-{SPACE}_desc-brain_mask.nii.gz"
    assert outputs.out_file == str(expected)
    mask = nb.load(expected)
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
    assert sorted(p.name for p in expected.parent.iterdir()) == [expected.name]


def test_sources_as_paths_need_the_bids_dir(tmp_path, bids_participants, volumes):
    source = bids_participants / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    with pytest.raises(Exception, match="need 'bids_dir'"):
        _sink(tmp_path / "out", volumes[0], source, desc="x", suffix="T1w", sources=[str(source)])


def test_a_write_that_fails_leaves_nothing_under_the_final_name(tmp_path, bids_participants, volumes, monkeypatch):
    import niworkflows.interfaces.bids as nw_bids

    def write_half_then_die(fname, header, data):
        with open(fname, "wb") as stream:
            stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nw_bids, "unsafe_write_nifti_header_and_data", write_half_then_die)
    out = tmp_path / "out"
    source = bids_participants / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    with pytest.raises(OSError, match="disk full"):
        _sink(out, volumes[0], source, space=SPACE, desc="harmonized", suffix="T1w", compress=True, data_dtype="int16")
    assert os.listdir(out) == []


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno not installed")
def test_written_derivatives_dataset_passes_bids_validator(tmp_path, bids_sessions, volumes):
    out = tmp_path / "out"
    init_derivatives_dataset(out, bids_sessions, container={"Type": "docker", "Tag": "hcld/hcld-bids:test"})
    source = bids_sessions / "sub-01" / "ses-a" / "anat" / "sub-01_ses-a_run-1_T1w.nii.gz"
    common = {"bids_dir": str(bids_sessions), "compress": True, "sources": [str(source)]}
    _sink(out, volumes[0], source, space=SPACE, desc="preproc", suffix="T1w", SkullStripped=True,
          Description="Bias-corrected T1w in template space", **common)
    _sink(out, volumes[1], source, space=SPACE, desc="brain", suffix="mask", Type="Brain", **common)
    _sink(out, volumes[0], source, space=SPACE, desc="harmonized", suffix="T1w", SkullStripped=True,
          provenance={"TargetSite": "siemens"}, **common)
    _sink(out, volumes[0], source, desc="harmonized", suffix="T1w", SkullStripped=True, **common)
    # Non-BIDS outputs the app also writes, hidden by .bidsignore.
    (out / "logs").mkdir()
    (out / "logs" / "config-x.toml").write_text("")
    (out / "models" / "hcld").mkdir(parents=True)
    (out / "models" / "hcld" / "manifest.json").write_text("{}")
    (out / "sub-01.html").write_text("<html></html>")
    (out / "sub-01" / "figures").mkdir()
    (out / "sub-01" / "figures" / "sub-01_ses-a_desc-harmonized_T1w.svg").write_text("<svg/>")
    (out / "group_T1w.tsv").write_text("participant_id\nsub-01\n")

    proc = subprocess.run([find_validator(), "--format", "json", str(out)], capture_output=True, text=True)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    assert [i for i in issues if i["severity"] == "error"] == []
    assert proc.returncode == 0


@pytest.mark.parametrize("source, prefix", [
    ("/data/sub-01/anat/sub-01_T1w.nii.gz", ".tmp-sub-01-"),
    (["/data/sub-A1b/ses-x/anat/sub-A1b_ses-x_run-2_T1w.nii.gz"], ".tmp-sub-A1b-"),
    ("/data/template.nii.gz", ".tmp-"),
])
def test_staging_directory_names_carry_the_subject(source, prefix):
    assert staging_prefix(source) == prefix
