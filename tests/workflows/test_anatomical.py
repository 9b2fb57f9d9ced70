from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from hcld_bids.errors import MissingInputError
from hcld_bids.preproc.grid import model_grid
from hcld_bids.preproc.registration import to_native
from hcld_bids.templates import check_templates
from hcld_bids.workflows.anatomical import OUTPUT_FIELDS, init_anat_preproc_wf

TPL = "MNI152NLin6Asym"
SCAN = "siemens_prismafit3T_xa30_s6_norm.nii.gz"


def _build(name="anat_preproc_wf", **kwargs):
    return init_anat_preproc_wf(template=TPL, resolution=2, grid=model_grid(TPL, 2),
                                omp_nthreads=kwargs.pop("omp_nthreads", 2), name=name, **kwargs)


def _outputs(wf, graph):
    """Values of the outputnode fields after a run (nipype drops identity nodes from the executed
    graph, so they are read from the nodes that feed the outputnode)."""
    executed = {node.name: node for node in graph.nodes()}
    values = {}
    for source, target, data in wf._graph.edges(data=True):
        if target.name == "outputnode":
            for source_field, field in data["connect"]:
                values[field] = getattr(executed[source.name].result.outputs, source_field)
    assert set(values) == set(OUTPUT_FIELDS)
    return SimpleNamespace(**values)


def _files(root: Path) -> dict:
    return {path: path.stat().st_mtime_ns for path in root.rglob("*")
            if path.is_file() and path.suffix in {".gz", ".mat", ".h5"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory, t1w_dir):
    """One real run on a 3 mm scan, then a second run of a freshly built workflow on the same
    work directory."""
    base = tmp_path_factory.mktemp("work")
    wf = _build()
    wf.base_dir = str(base)
    wf.inputs.inputnode.t1w = str(t1w_dir / SCAN)
    first = _outputs(wf, wf.run(plugin="Linear"))
    before = _files(base)
    again = _build()
    again.base_dir = str(base)
    again.inputs.inputnode.t1w = str(t1w_dir / SCAN)
    graph = again.run(plugin="Linear")
    return {"outputs": first, "before": before, "after": _files(base), "second": _outputs(again, graph)}


def test_workflow_declares_inputs_outputs_threads_and_methods():
    wf = _build(omp_nthreads=3)
    assert wf.get_node("inputnode").inputs.copyable_trait_names() == ["t1w"]
    assert set(wf.get_node("outputnode").inputs.copyable_trait_names()) == set(OUTPUT_FIELDS)
    for name in ("n4_head", "register", "n4_brain", "to_template"):
        node = wf.get_node(name)
        assert node.n_procs == 3 and node.inputs.num_threads == 3
        assert node.mem_gb > 0
    assert "N4" in wf.__desc__ and "ANTs 2." in wf.__desc__ and "ANTsPy" in wf.__desc__
    assert TPL in wf.__desc__


def test_workflow_with_syn_registration_builds_with_composite_transforms():
    wf = _build(registration="syn")
    assert wf.get_node("register").inputs.registration == "syn"
    assert "SyN" in wf.__desc__


def test_sloppy_sets_fast_n4_and_registration_and_says_so_in_the_methods():
    from nipype.interfaces.base import isdefined

    from hcld_bids.preproc.bias import SLOPPY_ITERATIONS

    default, sloppy = _build(), _build(sloppy=True)
    for name in ("n4_head", "n4_brain"):
        assert not isdefined(default.get_node(name).inputs.iterations)  # normal runs: node hashes unchanged
        assert sloppy.get_node(name).inputs.iterations == list(SLOPPY_ITERATIONS)
    assert not isdefined(default.get_node("register").inputs.sloppy)
    assert sloppy.get_node("register").inputs.sloppy is True
    assert "--sloppy" in sloppy.__desc__ and "AffineFast" in sloppy.__desc__
    assert "--sloppy" not in default.__desc__


def test_missing_template_fails_before_anything_runs():
    with pytest.raises(MissingInputError, match="fetch_templates"):
        init_anat_preproc_wf(template=TPL, resolution=1, grid=model_grid(TPL, 1), omp_nthreads=1)


@pytest.mark.slow
def test_template_space_outputs_are_on_the_full_template_grid(run):
    out = run["outputs"]
    template = nib.load(check_templates(TPL, 2)["T1w"])
    preproc, mask = nib.load(out.t1w_preproc), nib.load(out.brain_mask)
    assert preproc.shape == mask.shape == template.shape
    np.testing.assert_allclose(preproc.affine, template.affine)
    data = np.asarray(preproc.dataobj)
    assert data.dtype == np.float32 and data.min() == 0.0 and data.max() == 1.0
    inside = np.asarray(mask.dataobj) > 0
    # Not skull-stripped: the scalp is still there, outside the brain mask (measured: 0.4 of the
    # brain's voxel count; a skull-stripped image would have none).
    assert (data[~inside] > 0.05).sum() > 0.2 * inside.sum()
    assert out.scale_low < out.scale_high


@pytest.mark.slow
def test_brain_mask_matches_the_template_brain_and_a_plausible_native_volume(run):
    out = run["outputs"]
    mask = np.asarray(nib.load(out.brain_mask).dataobj) > 0
    reference = np.asarray(nib.load(check_templates(TPL, 2)["brain_mask"]).dataobj) > 0
    assert 2 * (mask & reference).sum() / (mask.sum() + reference.sum()) > 0.9
    native = nib.load(out.brain_mask_native)
    ref = nib.load(out.native_ref)
    assert native.shape == ref.shape and native.get_data_dtype() == np.uint8
    cm3 = (np.asarray(native.dataobj) > 0).sum() * np.prod(native.header.get_zooms()[:3]) / 1000
    assert 900 < cm3 < 2000


@pytest.mark.slow
def test_model_grid_outputs_are_brain_only_and_divisible_by_16(run):
    out = run["outputs"]
    image, mask = nib.load(out.model_t1w), nib.load(out.model_mask)
    assert image.shape == mask.shape == (80, 96, 80)
    data, inside = np.asarray(image.dataobj), np.asarray(mask.dataobj) > 0
    assert not data[~inside].any() and 0 <= data.min() and data.max() <= 1
    assert np.median(data[inside]) > 0.3


@pytest.mark.slow
def test_transforms_are_ants_affine_files_and_bring_images_back_to_native(run):
    out = run["outputs"]
    assert out.xfm_t1w2tpl.endswith(".mat") and out.xfm_tpl2t1w.endswith(".mat")
    back = to_native(out.t1w_preproc, out.xfm_tpl2t1w, out.native_ref)
    native_mask = np.asarray(nib.load(out.brain_mask_native).dataobj) > 0
    assert back.shape == nib.load(out.native_ref).shape
    # The scaled image brought back agrees with the bias-corrected native image inside the brain.
    n4 = np.asarray(nib.load(out.t1w_n4_native).dataobj)
    assert np.corrcoef(np.asarray(back.dataobj)[native_mask], n4[native_mask])[0, 1] > 0.8


@pytest.mark.slow
def test_rerun_with_the_same_inputs_recomputes_nothing(run):
    assert run["before"] and run["after"] == run["before"]
    assert run["second"].t1w_preproc == run["outputs"].t1w_preproc
