"""nipype interface of the per-image quality control written into the harmonized image's sidecar."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, Str, TraitedSpec, isdefined, traits


class _HarmonizationQCInputSpec(BaseInterfaceInputSpec):
    t1w_preproc = File(exists=True, mandatory=True, desc="preprocessed T1w, template grid, [0, 1]")
    harmonized = File(exists=True, mandatory=True, desc="harmonized T1w, template grid, [0, 1]")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask, template grid")
    target_site = Str(desc="target site (its histogram is read from the model manifest)")
    model_manifest = File(exists=True, desc="the model bundle's manifest.json")
    reference_t1w = File(exists=True, desc="reference volume on the model grid (target style)")
    reference_mask = File(exists=True, desc="brain mask of the reference on the model grid")
    template_t1w = File(exists=True, desc="the template's T1w (TemplateSimilarity; skipped on another grid)")
    template_mask = File(exists=True, desc="the template's brain mask")


class _HarmonizationQCOutputSpec(TraitedSpec):
    qc = traits.Dict(desc='the "QC" block of the sidecar (hcld_bids.reports.metrics.image_qc)')


class HarmonizationQC(SimpleInterface):
    """Histogram distances to the target style before/after, structure preservation, mask agreement, the
    input's similarity to the template, flags."""

    input_spec = _HarmonizationQCInputSpec
    output_spec = _HarmonizationQCOutputSpec

    def _run_interface(self, runtime):
        import json

        from ..reports.metrics import brain_histogram, image_qc

        if isdefined(self.inputs.reference_t1w):
            ref = np.asarray(nib.load(self.inputs.reference_t1w).dataobj, dtype=np.float32)
            ref_mask = np.asarray(nib.load(self.inputs.reference_mask).dataobj) > 0
            edges, density = brain_histogram(ref, ref_mask)
        else:
            manifest = json.loads(open(self.inputs.model_manifest).read())
            hist = manifest.get("sites", {}).get(self.inputs.target_site, {}).get("intensity_histogram")
            if not hist:
                raise ValueError(f"{self.inputs.model_manifest}: site {self.inputs.target_site!r} has no "
                                 "intensity_histogram; rebuild its prototype with this version of hcld-bids")
            edges, density = np.asarray(hist["edges"], float), np.asarray(hist["density"], float)
        images = [nib.load(f) for f in (self.inputs.t1w_preproc, self.inputs.harmonized, self.inputs.brain_mask)]
        template = None
        if isdefined(self.inputs.template_t1w) and isdefined(self.inputs.template_mask):
            pair = [nib.as_closest_canonical(nib.load(f)) for f in (self.inputs.template_t1w,
                                                                    self.inputs.template_mask)]
            if pair[0].shape == images[0].shape and np.allclose(pair[0].affine, images[0].affine, atol=1e-3):
                template = tuple(np.asarray(img.dataobj, dtype=np.float32) for img in pair)
        self._results["qc"] = image_qc(*images, edges, density, template=template)
        return runtime
