"""HCLD model core: 3D KL autoencoder, conditional latent diffusion UNet, DDIM, fusion, losses, model
bundle, harmonizer and training engine.

Usable on its own (no workflow engine, no dataset layer), e.g. from a notebook::

    from hcld_bids.model import load_bundle, Harmonizer
    h = Harmonizer(load_bundle("models/hcld"))
    out = h.harmonize(volume, h.style_from_site("siteA"))
"""

from .autoencoder import AutoencoderKL
from .bundle import ModelBundle, add_prototypes, load_bundle, save_bundle
from .ddim import NoiseSchedule
from .errors import (BundleError, BundleIntegrityError, BundleNotFoundError, BundleVersionError, CheckpointError,
                     InputVolumeError, ModelError, UnknownSiteError)
from .fusion import adain, channel_stats, instance_norm
from .harmonize import Harmonizer, Style
from .prototypes import SitePrototype, compute_scale_factor, compute_site_prototype
from .unet import DiffusionUNet

__all__ = [
    "AutoencoderKL", "DiffusionUNet", "NoiseSchedule", "ModelBundle", "load_bundle", "save_bundle", "add_prototypes",
    "Harmonizer", "Style", "SitePrototype", "compute_site_prototype", "compute_scale_factor", "adain", "channel_stats", "instance_norm",
    "ModelError", "BundleError", "BundleNotFoundError", "BundleIntegrityError", "BundleVersionError",
    "InputVolumeError", "UnknownSiteError", "CheckpointError",
]
