"""Fixtures of the model-core tests: tiny architectures and real 3 mm scans cropped to a small grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hcld_bids.testing.volumes import real_volume


#: Tiny architectures that keep every structural feature of the defaults (3 levels, attention, skips).
TINY_AE = dict(channels=(8, 16, 16), latent_channels=6, num_res_blocks=1, attention_levels=(False, False, True),
               norm_groups=4)
TINY_UNET = dict(in_channels=12, out_channels=6, channels=(8, 16, 16), num_res_blocks=1,
                 attention_levels=(False, True, True), head_channels=16, norm_groups=4)


def load_real_volume(name: str, shape=(32, 48, 32)) -> np.ndarray:
    """A vendored scan scaled to [0, 1] by its 0.5/99.5 percentiles and center-cropped/padded to ``shape``."""
    return real_volume(name, shape)


# The vendored Philips scan is clipped at 32767 in more than 10 % of its voxels, so it is left out here.
REAL_SCANS = ["siemens_prismafit3T_xa30_s5_nonorm.nii.gz", "siemens_prismafit3T_xa30_s6_norm.nii.gz",
              "uih_umr770_3T_run1_2mm.nii.gz", "uih_umr770_3T_run2_2mm.nii.gz"]


@pytest.fixture(scope="session")
def tiny_ae_config() -> dict:
    return dict(TINY_AE)


@pytest.fixture(scope="session")
def tiny_unet_config() -> dict:
    return dict(TINY_UNET)


@pytest.fixture(scope="session")
def real_volumes() -> list[np.ndarray]:
    return [load_real_volume(n) for n in REAL_SCANS]


@pytest.fixture
def tiny_models():
    from hcld_bids.model import AutoencoderKL, DiffusionUNet

    torch.manual_seed(0)
    ae = AutoencoderKL(**TINY_AE).eval()
    unet = DiffusionUNet(**TINY_UNET).eval()
    # the zero-initialised output layer would make every UNet output 0; give it weights so tests see a
    # real dependence on the input
    torch.nn.init.normal_(unet.out_conv.weight, std=0.02)
    return ae, unet


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny networks gain nothing from a second thread, and on a shared machine OpenMP barriers waiting for a
    descheduled thread make each operation cost a scheduler time slice."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
