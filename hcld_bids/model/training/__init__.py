"""Training engine of both stages: dataclass configs, resumable runs, CSV log, AMP on CUDA, DDP under torchrun.

    from hcld_bids.model.training import AutoencoderTrainConfig, train_autoencoder, LDMTrainConfig, train_ldm
    ae = train_autoencoder(volumes, AutoencoderTrainConfig(patch_size=(48, 48, 48)), "work/ae")
    ldm = train_ldm(volumes, sites, LDMTrainConfig(), "work/ldm", autoencoder=ae.autoencoder,
                    scale_factor=ae.scale_factor)
"""

from .config import AutoencoderTrainConfig, LDMTrainConfig, LoopConfig
from .stage1 import AutoencoderResult, train_autoencoder
from .stage2 import LDMResult, cached_latents, train_ldm

__all__ = ["AutoencoderTrainConfig", "LDMTrainConfig", "LoopConfig", "train_autoencoder", "train_ldm",
           "AutoencoderResult", "LDMResult", "cached_latents"]
