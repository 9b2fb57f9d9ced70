"""nipype interfaces of the harmonization step: run HCLD on the model grid, put the result back on the
template grid, convert the transform to a BIDS-Derivatives file.

:class:`HarmonizeT1w` loads the model bundle once per process (MultiProc workers keep it between
nodes), sets torch's thread count from the node's ``num_threads`` and logs its progress.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    Str,
    TraitedSpec,
    isdefined,
    traits,
)

from .preproc import _image, _save

LOGGER = logging.getLogger("nipype.interface")

#: (bundle directory, bundle sha256, device) -> Harmonizer; one per process.
_HARMONIZERS: dict = {}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values are returned unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def get_harmonizer(model_dir: str, device: str):
    """The process-wide :class:`~hcld_bids.model.harmonize.Harmonizer` of a bundle on a device."""
    from ..model.bundle import load_bundle
    from ..model.harmonize import Harmonizer

    key = (os.path.realpath(model_dir), device)
    if key not in _HARMONIZERS:
        _HARMONIZERS[key] = Harmonizer(load_bundle(model_dir, device="cpu"), device=device)
    return _HARMONIZERS[key]


class _HarmonizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="brain-only scaled T1w on the model grid")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the model grid")
    model_dir = Str(mandatory=True, desc="model bundle directory")
    model_sha256 = Str(mandatory=True, desc="digest of the bundle's weights (makes reruns notice a new model)")
    target_site = Str(desc="site whose stored style prototype is the target")
    reference_file = File(exists=True, desc="reference T1w on the model grid (brain-only, scaled), the target style")
    regime = traits.Dict(desc="inference regime (hcld_bids.model.harmonize.Regime as a dict); default: the "
                         "bundle's own")
    seed = traits.Int(0, usedefault=True, desc="random seed")
    device = Str("cpu", usedefault=True, desc="torch device (cpu, cuda, cuda:N)")
    num_threads = traits.Int(1, usedefault=True, desc="torch CPU threads")
    label = Str("", usedefault=True, desc="name of the image in progress messages")


class _HarmonizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="harmonized T1w on the model grid, [0, 1], zero outside the mask")
    style = Str(desc="style used: 'site:<label>' or 'reference:<sha256 of the reference volume>'")
    device = Str(desc="device the networks ran on")
    wall_time = traits.Float(desc="seconds spent harmonizing (model loading excluded)")
    timings = traits.Dict(desc="seconds per stage: encode, inversion, sampling, decode")


class HarmonizeT1w(SimpleInterface):
    """Harmonize one model-grid volume toward a site prototype or a reference volume."""

    input_spec = _HarmonizeInputSpec
    output_spec = _HarmonizeOutputSpec

    def _run_interface(self, runtime):
        import torch

        torch.set_num_threads(max(1, int(self.inputs.num_threads)))
        harmonizer = get_harmonizer(self.inputs.model_dir, self.inputs.device)
        if harmonizer.bundle.sha256 != self.inputs.model_sha256:
            raise RuntimeError(f"model bundle {self.inputs.model_dir} changed while the workflow ran")

        img = nib.load(self.inputs.in_file)
        volume = np.asarray(img.dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        if isdefined(self.inputs.reference_file):
            reference = np.asarray(nib.load(self.inputs.reference_file).dataobj, dtype=np.float32)
            style = harmonizer.style_from_volume(reference)
        else:
            style = harmonizer.style_from_site(self.inputs.target_site)

        from ..model.harmonize import Regime

        regime = Regime.from_dict(self.inputs.regime) if isdefined(self.inputs.regime) else harmonizer.default_regime
        label = self.inputs.label or Path(self.inputs.in_file).name
        total = regime.unet_calls()
        step = {"n": 0, "shown": -1}

        def progress(stage, done, of):
            step["n"] += 1
            percent = 100 * step["n"] // max(total, 1)
            if percent // 25 != step["shown"] // 25 or step["n"] == total:
                step["shown"] = percent
                # hcld_progress: the same, structured, for the level's console progress (hcld_bids.levels.progress)
                LOGGER.info("harmonizing %s: %s %d/%d (%d%% of DDIM steps)", label, stage, done, of, percent,
                            extra={"hcld_progress": {"label": label, "stage": stage, "done": int(done),
                                                     "total": int(of), "percent": int(percent)}})

        start = time.perf_counter()
        out = harmonizer.harmonize(volume, style, regime=regime, seed=self.inputs.seed, mask=mask, progress=progress)
        self._results["wall_time"] = round(time.perf_counter() - start, 3)
        self._results["timings"] = {k: round(v, 3) for k, v in harmonizer.last_timings.items()}
        self._results["style"] = style.source
        self._results["device"] = str(harmonizer.device)
        self._results["out_file"] = _save(_image(out, img.affine, img, np.float32), runtime.cwd,
                                          "t1w_harmonized_model_grid.nii.gz")
        return runtime


class _ToTemplateGridInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image on the model grid")
    template_file = File(exists=True, mandatory=True, desc="any image on the full template grid")
    grid_shape = traits.Tuple(traits.Int, traits.Int, traits.Int, mandatory=True, desc="window shape")
    grid_start = traits.Tuple(traits.Int, traits.Int, traits.Int, mandatory=True, desc="window start index")


class _ToTemplateGridOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image on the full template grid (zero outside the window)")


class ToTemplateGrid(SimpleInterface):
    """Place a model-grid image back into the template grid (inverse of the preprocessing crop)."""

    input_spec = _ToTemplateGridInputSpec
    output_spec = _ToTemplateGridOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.grid import GridSpec, grid_affine, uncrop_from_grid

        grid = GridSpec(shape=self.inputs.grid_shape, start=self.inputs.grid_start)
        img = nib.load(self.inputs.in_file)
        template = nib.load(self.inputs.template_file)
        if not np.allclose(grid_affine(template.affine, grid), img.affine, atol=1e-4):
            raise ValueError(f"{self.inputs.in_file} is not the model window {grid} of {self.inputs.template_file}")
        data = uncrop_from_grid(np.asarray(img.dataobj, dtype=np.float32), grid, template.shape)
        out = _image(data, template.affine, template, np.float32)
        self._results["out_file"] = _save(out, runtime.cwd, "t1w_harmonized_template_grid.nii.gz")
        return runtime


class _ItkTransformInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="ANTs transform (.mat affine or .h5 composite)")


class _ItkTransformOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the same transform as ITK text (.txt) or HDF5 (.h5)")


class ItkTransform(SimpleInterface):
    """Write an ANTs affine as ITK text (BIDS-Derivatives ``_xfm.txt``); composite ``.h5`` files pass through."""

    input_spec = _ItkTransformInputSpec
    output_spec = _ItkTransformOutputSpec

    def _run_interface(self, runtime):
        src = Path(self.inputs.in_file)
        if src.suffix == ".h5":
            self._results["out_file"] = str(src)
            return runtime
        import ants

        out = Path(runtime.cwd) / "xfm.txt"
        tmp = out.with_name(".xfm.tmp.txt")
        ants.write_transform(ants.read_transform(str(src)), str(tmp))
        os.replace(tmp, out)
        self._results["out_file"] = str(out)
        return runtime
