"""Exceptions raised by the model core.

Every message is one line that names the offending file (or value) and says how to fix it, so that the
command line can print it as it is and map the class to an exit code of the BIDS execution spec:

=========================  ==============================================  =========
class                      raised when                                     exit code
=========================  ==============================================  =========
``BundleNotFoundError``    the bundle directory or one of its files is     66
                           missing
``BundleError``            any other problem with a bundle (bad JSON,      65
                           tampered weights, newer format, wrong grid)
``InputVolumeError``       a volume handed to the harmonizer is unusable   65
``UnknownSiteError``       a target site is not in the bundle              64
``CheckpointError``        a training work directory cannot be resumed     65
=========================  ==============================================  =========
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by :mod:`hcld_bids.model`."""


class BundleError(ModelError, ValueError):
    """A model bundle cannot be used (bad manifest, tampered file, incompatible version or grid)."""


class BundleNotFoundError(BundleError, FileNotFoundError):
    """The bundle directory, its manifest or one of its weight files does not exist."""


class BundleIntegrityError(BundleError):
    """A weight file's sha256 differs from the one recorded in the manifest."""


class BundleVersionError(BundleError):
    """The bundle was written by a newer format version than this package reads."""


class InputVolumeError(ModelError, ValueError):
    """A volume given to the harmonizer has the wrong shape, dtype or non-finite values."""


class UnknownSiteError(ModelError, ValueError):
    """The requested target site has no style prototype in the bundle."""


class CheckpointError(ModelError, ValueError):
    """A training checkpoint is missing pieces or belongs to a different configuration."""
