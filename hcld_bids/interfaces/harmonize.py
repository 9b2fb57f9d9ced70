"""nipype interfaces of the harmonization step: run HCLD on the model grid, put the result back on the
template grid, convert the transform to a BIDS-Derivatives file.

:class:`HarmonizeT1w` harmonizes one image (the CPU graph: one node per T1w, which MultiProc runs in
parallel); :class:`HarmonizeBatch` harmonizes several images in batches of up to ``batch_size`` volumes per
call of the networks (the CUDA graph: one node per participant). Both load the model bundle once per process
(MultiProc workers keep it, and on CUDA its captured graphs, between nodes), set torch's thread count from
the node's ``num_threads`` and log their progress.
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
    InputMultiObject,
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


class _ModelTargetInputSpec(BaseInterfaceInputSpec):
    """The model, the target style and the regime: what every harmonization interface takes."""

    model_dir = Str(mandatory=True, desc="model bundle directory")
    model_sha256 = Str(mandatory=True, desc="digest of the bundle's weights (makes reruns notice a new model)")
    target_site = Str(desc="site whose stored style prototype is the target")
    reference_file = File(exists=True, desc="reference T1w on the model grid (brain-only, scaled), the target style")
    regime = traits.Dict(desc="inference regime (hcld_bids.model.harmonize.Regime as a dict); default: the "
                         "bundle's own")
    seed = traits.Int(0, usedefault=True, desc="random seed")
    num_threads = traits.Int(1, usedefault=True, desc="torch CPU threads")


class _HarmonizeInputSpec(_ModelTargetInputSpec):
    in_file = File(exists=True, mandatory=True, desc="brain-only scaled T1w on the model grid")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the model grid")
    device = Str("cpu", usedefault=True, desc="torch device (cpu, cuda, cuda:N)")
    label = Str("", usedefault=True, desc="name of the image in progress messages")


class _HarmonizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="harmonized T1w on the model grid, [0, 1], zero outside the mask")
    style = Str(desc="style used: 'site:<label>' or 'reference:<sha256 of the reference volume>'")
    device = Str(desc="device the networks ran on")
    wall_time = traits.Float(desc="seconds spent harmonizing (model loading excluded)")
    timings = traits.Dict(desc="seconds per stage: encode, inversion, sampling, decode")
    restoration = traits.Dict(desc="the input restoration: 'weight' and the estimated 'noise' (None when the "
                                   "weight does not depend on it)")


def _open_harmonizer(inputs):
    """The process's harmonizer of the node's bundle and device, torch threads set, bundle unchanged."""
    import torch

    torch.set_num_threads(max(1, int(inputs.num_threads)))
    harmonizer = get_harmonizer(inputs.model_dir, inputs.device)
    if harmonizer.bundle.sha256 != inputs.model_sha256:
        raise RuntimeError(f"model bundle {inputs.model_dir} changed while the workflow ran")
    return harmonizer


def _style_and_regime(harmonizer, inputs):
    from ..model.harmonize import Regime

    if isdefined(inputs.reference_file):
        reference = np.asarray(nib.load(inputs.reference_file).dataobj, dtype=np.float32)
        style = harmonizer.style_from_volume(reference)
    else:
        style = harmonizer.style_from_site(inputs.target_site)
    regime = Regime.from_dict(inputs.regime) if isdefined(inputs.regime) else harmonizer.default_regime
    return style, regime


def _progress(label: str, total: int):
    """``progress(stage, done, of)`` of :meth:`Harmonizer.harmonize` logging at every quarter of the DDIM steps."""
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

    return progress


class HarmonizeT1w(SimpleInterface):
    """Harmonize one model-grid volume toward a site prototype or a reference volume."""

    input_spec = _HarmonizeInputSpec
    output_spec = _HarmonizeOutputSpec

    def _run_interface(self, runtime):
        harmonizer = _open_harmonizer(self.inputs)
        img = nib.load(self.inputs.in_file)
        volume = np.asarray(img.dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        style, regime = _style_and_regime(harmonizer, self.inputs)
        label = self.inputs.label or Path(self.inputs.in_file).name
        progress = _progress(label, regime.unet_calls())

        start = time.perf_counter()
        out = harmonizer.harmonize(volume, style, regime=regime, seed=self.inputs.seed, mask=mask, progress=progress)
        self._results["wall_time"] = round(time.perf_counter() - start, 3)
        self._results["timings"] = {k: round(v, 3) for k, v in harmonizer.last_timings.items()}
        self._results["restoration"] = harmonizer.last_restoration[0]
        self._results["style"] = style.source
        self._results["device"] = str(harmonizer.device)
        self._results["out_file"] = _save(_image(out, img.affine, img, np.float32), runtime.cwd,
                                          "t1w_harmonized_model_grid.nii.gz")
        return runtime


class _HarmonizeBatchInputSpec(_ModelTargetInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="brain-only scaled T1w images on the model grid")
    mask_files = InputMultiObject(File(exists=True), mandatory=True, desc="their brain masks, in the same order")
    labels = traits.List(Str, desc="names of the images in progress messages, in the same order")
    device = Str("cuda", usedefault=True, desc="torch device (cuda, cuda:N; cpu works, without any gain)")
    batch_size = traits.Int(16, usedefault=True, desc="most volumes per call of the networks")


class _HarmonizeBatchOutputSpec(TraitedSpec):
    # a plain list (an OutputMultiObject of one file would be handed on as that file's path, not a list)
    out_files = traits.List(File(exists=True), desc="harmonized images on the model grid, in the input order")
    style = Str(desc="style used: 'site:<label>' or 'reference:<sha256 of the reference volume>'")
    device = Str(desc="device the networks ran on")
    wall_times = traits.List(traits.Float, desc="seconds per image: its batch's time divided by the batch's size")
    timings = traits.List(traits.Dict, desc="seconds per stage and image (its batch's, divided by the batch's size)")
    restoration = traits.List(traits.Dict, desc="the input restoration of each image (see HarmonizeT1w)")


class HarmonizeBatch(SimpleInterface):
    """Harmonize several model-grid volumes (the T1w images of a participant) in batches.

    Each image gets what :class:`HarmonizeT1w` would give it on the same device, up to the numerics of the
    batch (on CUDA SDEdit's noise of a volume does not depend on the batch: see
    :mod:`hcld_bids.model.harmonize`); wall times are shared out equally within a batch.
    """

    input_spec = _HarmonizeBatchInputSpec
    output_spec = _HarmonizeBatchOutputSpec

    def _run_interface(self, runtime):
        in_files, mask_files = list(self.inputs.in_files), list(self.inputs.mask_files)
        if len(in_files) != len(mask_files):
            raise ValueError(f"{len(in_files)} images but {len(mask_files)} masks")
        labels = list(self.inputs.labels) if isdefined(self.inputs.labels) else []
        labels = labels if len(labels) == len(in_files) else [Path(f).name for f in in_files]
        harmonizer = _open_harmonizer(self.inputs)
        style, regime = _style_and_regime(harmonizer, self.inputs)
        size = max(1, int(self.inputs.batch_size))
        out_files, wall_times, timings, restoration = [], [], [], []
        for first in range(0, len(in_files), size):
            part = slice(first, first + size)
            images = [nib.load(f) for f in in_files[part]]
            volumes = [np.asarray(img.dataobj, dtype=np.float32) for img in images]
            masks = [np.asarray(nib.load(f).dataobj) > 0 for f in mask_files[part]]
            names = labels[part]
            label = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
            start = time.perf_counter()
            outs = harmonizer.harmonize_batch(volumes, style, regime=regime, seed=self.inputs.seed, masks=masks,
                                              progress=_progress(label, regime.unet_calls()))
            share = (time.perf_counter() - start) / len(volumes)
            for index, (out, img) in enumerate(zip(outs, images), start=first):
                out_files.append(_save(_image(out, img.affine, img, np.float32), runtime.cwd,
                                       f"t1w_harmonized_model_grid_{index:03d}.nii.gz"))
                wall_times.append(round(share, 3))
                timings.append({k: round(v / len(volumes), 3) for k, v in harmonizer.last_timings.items()})
            restoration.extend(harmonizer.last_restoration)
        self._results.update(out_files=out_files, wall_times=wall_times, timings=timings, restoration=restoration,
                             style=style.source, device=str(harmonizer.device))
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
