"""hcld-bids: 3D latent-diffusion harmonization (HCLD) of T1-weighted MRI as a BIDS App."""

from ._version import __version__

__all__ = ["__version__"]

#: Where the project lives; written into GeneratedBy.CodeURL of every derivatives dataset.
CODE_URL = "https://github.com/hcld-bids/hcld-bids"
