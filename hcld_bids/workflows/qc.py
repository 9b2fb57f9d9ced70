"""Per-image quality control of the harmonization (written into the harmonized image's sidecar)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.qc import HarmonizationQC


def init_qc_wf(*, model, target_site: str | None, name: str = "qc_wf") -> pe.Workflow:
    """Compare input and harmonized image: distance of their brain histograms to the target style's,
    structure preservation inside the brain, mask agreement, similarity of the input to the template, and the
    flags.

    Inputs: ``t1w_preproc``, ``harmonized``, ``brain_mask`` (template grid); ``reference_t1w`` and
    ``reference_mask`` (model grid) when the target is a reference image. Output: ``qc`` (dict).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["t1w_preproc", "harmonized", "brain_mask", "reference_t1w", "reference_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["qc"]), name="outputnode")
    qc = pe.Node(HarmonizationQC(), name="harmonization_qc", mem_gb=0.5)
    if getattr(model, "template_mask_file", None):  # the template the inputs were registered to
        qc.inputs.template_t1w, qc.inputs.template_mask = str(model.template_file), str(model.template_mask_file)
    if target_site:
        qc.inputs.target_site = target_site
        qc.inputs.model_manifest = str(model.path / "manifest.json")
    workflow.connect([
        (inputnode, qc, [("t1w_preproc", "t1w_preproc"), ("harmonized", "harmonized"),
                         ("brain_mask", "brain_mask")]),
        (qc, outputnode, [("qc", "qc")]),
    ])
    if not target_site:
        workflow.connect([(inputnode, qc, [("reference_t1w", "reference_t1w"),
                                           ("reference_mask", "reference_mask")])])
    return workflow
