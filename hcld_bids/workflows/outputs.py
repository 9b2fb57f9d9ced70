"""Outputs of one T1w: every derivative goes through the one sink,
:class:`hcld_bids.bids.sink.DerivativesDataSink` (names from the source T1w's entities, atomic writes)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.sink import DerivativesDataSink

INPUT_FIELDS = [
    "source_file",          # the raw T1w in BIDS_DIR
    "t1w_preproc",          # template grid
    "brain_mask",           # template grid
    "harmonized_template",  # template grid
    "harmonized_native",    # native grid (when ``native``)
    "xfm_t1w2tpl",          # ITK transform file
    "provenance",           # dict: the "HCLD" block of the harmonized image's sidecar
    "qc",                   # dict: the "QC" block of the harmonized image's sidecar
]


class _MergeSources(niu.Merge):
    """``niu.Merge`` that always runs: its inputs are paths in OUTPUT_DIR, and nipype hashes a file by its
    content, not its path, so a cached result would hand another output directory's paths (a work
    directory shared by several output directories) to the sink."""

    _always_run = True


def _sidecar(provenance, qc):
    return {"HCLD": provenance, "QC": qc}


def init_outputs_wf(*, output_dir, bids_dir, template: str, resolution: int, native: bool,
                    name: str = "outputs_wf") -> pe.Workflow:
    """Write the derivatives of one T1w into OUTPUT_DIR.

    Files (``<prefix>`` from the source T1w's entities; ``res`` is the TemplateFlow resolution index)::

        <prefix>_space-<tpl>_res-<res>_desc-preproc_T1w.nii.gz     + .json (SkullStripped false)
        <prefix>_space-<tpl>_res-<res>_desc-brain_mask.nii.gz      + .json (Type Brain)
        <prefix>_space-<tpl>_res-<res>_desc-harmonized_T1w.nii.gz  + .json (SkullStripped true, HCLD, QC)
        <prefix>_desc-harmonized_T1w.nii.gz                        + .json (when ``native``)
        <prefix>_from-T1w_to-<tpl>_mode-image_xfm.txt
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["harmonized", "preproc", "mask", "xfm", "native"]),
                         name="outputnode")
    common = dict(base_directory=str(output_dir), bids_dir=str(bids_dir))
    space = dict(space=template, resolution=str(resolution))

    ds_preproc = pe.Node(DerivativesDataSink(**common, **space, desc="preproc", suffix="T1w", compress=True,
                                             data_dtype="float32", SkullStripped=False),
                         name="ds_preproc", run_without_submitting=True)
    ds_mask = pe.Node(DerivativesDataSink(**common, **space, desc="brain", suffix="mask", compress=True,
                                          data_dtype="uint8", Type="Brain"),
                      name="ds_mask", run_without_submitting=True)
    ds_xfm = pe.Node(DerivativesDataSink(**common, mode="image", suffix="xfm", **{"from": "T1w", "to": template}),
                     name="ds_xfm", run_without_submitting=True)
    sidecar = pe.Node(niu.Function(function=_sidecar, input_names=["provenance", "qc"], output_names=["meta"]),
                      name="sidecar", run_without_submitting=True)
    ds_harmonized = pe.Node(DerivativesDataSink(**common, **space, desc="harmonized", suffix="T1w", compress=True,
                                                data_dtype="float32", SkullStripped=True),
                            name="ds_harmonized", run_without_submitting=True)
    sources = pe.Node(_MergeSources(2), name="sources", run_without_submitting=True)

    workflow.connect([
        (inputnode, ds_preproc, [("source_file", "source_file"), ("t1w_preproc", "in_file"),
                                 ("source_file", "sources")]),
        (inputnode, ds_mask, [("source_file", "source_file"), ("brain_mask", "in_file")]),
        (ds_preproc, ds_mask, [("out_file", "sources")]),
        (inputnode, ds_xfm, [("source_file", "source_file"), ("xfm_t1w2tpl", "in_file")]),
        (inputnode, sidecar, [("provenance", "provenance"), ("qc", "qc")]),
        (inputnode, sources, [("source_file", "in1")]),
        (ds_preproc, sources, [("out_file", "in2")]),
        (inputnode, ds_harmonized, [("source_file", "source_file"), ("harmonized_template", "in_file")]),
        (sources, ds_harmonized, [("out", "sources")]),
        (sidecar, ds_harmonized, [("meta", "meta_dict")]),
        (ds_harmonized, outputnode, [("out_file", "harmonized")]),
        (ds_preproc, outputnode, [("out_file", "preproc")]),
        (ds_mask, outputnode, [("out_file", "mask")]),
        (ds_xfm, outputnode, [("out_file", "xfm")]),
    ])
    if native:
        ds_native = pe.Node(DerivativesDataSink(**common, desc="harmonized", suffix="T1w", compress=True,
                                                data_dtype="float32", SkullStripped=True),
                            name="ds_native", run_without_submitting=True)
        workflow.connect([
            (inputnode, ds_native, [("source_file", "source_file"), ("harmonized_native", "in_file")]),
            (ds_harmonized, ds_native, [("out_file", "sources")]),
            (sidecar, ds_native, [("meta", "meta_dict")]),
            (ds_native, outputnode, [("out_file", "native")]),
        ])
    return workflow
