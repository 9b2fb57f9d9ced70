"""The model bundle as the level runners see it: opened and checked once, before any workflow is built.

:func:`open_model` loads the bundle's manifest and weights (hashes checked), checks its preprocessing
specification and inference block against this pipeline, finds the template files it needs and returns a
:class:`ModelInfo`, the only description of the model the workflows receive. Errors of
:mod:`hcld_bids.model` become the exit codes of the BIDS execution specification (:func:`model_error`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadDataError, HCLDError, MissingInputError, UsageError
from ..manifest import is_demo_model, prototype_sites, trained_sites

LOGGER = logging.getLogger("hcld_bids")

@dataclass(frozen=True)
class ModelInfo:
    """What the workflows need to know about the model bundle (the networks stay unloaded here)."""

    path: Path
    name: str
    sha256: str
    sites: tuple
    template: str
    resolution: int
    registration: str
    grid: object           # hcld_bids.preproc.grid.GridSpec
    template_file: Path    # template T1w on the full template grid
    mem_gb: float          # memory one harmonization needs
    manifest: dict
    #: the networks of the demo model shipped with the package (also in a copy with added prototypes)
    demo: bool = False
    template_mask_file: Path | None = None  # the template's brain mask (QC's template similarity)

    @property
    def trained_sites(self) -> dict:
        """Sites the networks were trained on, with their numbers of images (:mod:`hcld_bids.manifest`)."""
        return trained_sites(self.manifest)

    @property
    def prototype_sites(self) -> dict:
        """Sites with a style prototype whose images the networks never saw (``--add-site-prototypes``)."""
        return prototype_sites(self.manifest)


def model_error(err: Exception) -> HCLDError:
    """Map an exception of :mod:`hcld_bids.model` to the exit code of the BIDS execution spec."""
    from ..model.errors import BundleNotFoundError, UnknownSiteError

    message = " ".join(str(err).split())
    if isinstance(err, BundleNotFoundError):
        return MissingInputError(message)
    if isinstance(err, UnknownSiteError):
        return UsageError(message)
    return BadDataError(message)


def open_model(path: Path, *, source: str = "argument") -> ModelInfo:
    """Load and check a model bundle: weights' sha256, format version, preprocessing, templates."""
    from ..model.bundle import load_bundle
    from ..model.errors import ModelError
    from ..model.harmonize import Regime
    from ..preproc.grid import GridSpec
    from ..preproc.spec import check_preprocessing_spec
    from ..templates import check_templates
    from ..workflows.harmonization import harmonize_mem_gb

    if source == "demo" and not Path(path).is_dir():
        raise MissingInputError(
            f"the bundled demo model is missing from this installation ({path}); reinstall hcld-bids or give "
            "--model DIR"
        )
    try:
        bundle = load_bundle(path, device="cpu")
    except ModelError as err:
        raise model_error(err) from None
    spec = check_preprocessing_spec(bundle.manifest.get("preprocessing"), bundle=Path(path) / "manifest.json")
    try:
        Regime.from_dict(bundle.manifest.get("inference"))
    except (TypeError, ValueError) as err:
        raise BadDataError(f"{Path(path) / 'manifest.json'}: invalid 'inference' block ({err}); use a bundle "
                           f"written by hcld-bids") from None
    files = check_templates(spec["template"], int(spec["resolution"]))
    grid = GridSpec.from_dict(spec["grid"])
    channels = (bundle.manifest.get("autoencoder", {}).get("config", {}).get("channels") or [32])[0]
    return ModelInfo(
        path=Path(path).absolute(), name=str(bundle.manifest.get("name") or Path(path).name), sha256=bundle.sha256,
        sites=tuple(bundle.sites), template=spec["template"], resolution=int(spec["resolution"]),
        registration=spec.get("registration", "affine"), grid=grid, template_file=Path(files["T1w"]),
        mem_gb=harmonize_mem_gb(grid.shape, channels), manifest=bundle.manifest,
        demo=source == "demo" or is_demo_model(bundle.manifest), template_mask_file=Path(files["brain_mask"]),
    )


def resolve_torch_device(device: str) -> str:
    """Check ``--device``: ``auto`` picks CUDA when available; asking for CUDA without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is visible to this process; use --device cpu "
                             "(or auto), or run on a machine/container with a GPU (docker --gpus all, apptainer --nv)")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0 ... "
                             f"cuda:{torch.cuda.device_count() - 1}")
    return device


def check_memory(config, model: ModelInfo) -> None:
    """``--mem`` smaller than one harmonization needs is a usage error (nothing could ever run)."""
    mem = config.nipype.mem_gb
    if mem is not None and mem < model.mem_gb:
        raise UsageError(f"--mem {mem:g} GB is less than one harmonization needs ({model.mem_gb:g} GB for the "
                         f"{'x'.join(map(str, model.grid.shape))} grid of model {model.path}); raise --mem")
