"""Harmonize a preprocessed volume toward a target style.

Path per volume (method.md, "Inference"): encode ``z = sf * E(x)``; fuse ``z = AdaIN(z, style)``; move the
latent with the diffusion model as the :class:`Regime` says; decode ``D(z / sf)``; optionally add back the
input's detail that the autoencoder loses and match the brain histogram to the target's; clamp to [0, 1];
zero outside the mask.

Regimes (``Regime.kind``), ``t* = round(strength * (T - 1))`` on the training schedule:

* ``full``: DDIM inversion to ``t*`` over ``inversion_steps`` UNet calls and DDIM sampling back over
  ``sampling_steps`` calls, both conditioned on the target style (method.md; with ``strength`` 1 the full
  inversion of the first releases). With an exact schedule the two halves cancel for ``t*`` well below
  T, and the output is the decoded fused latent.
* ``research``: the research code's effective regime, reproduced on purpose: its DDIM arithmetic uses a
  schedule built with 50 training steps (same beta range) while the network was trained on 1000, inverts
  30 steps of size 1 (to t = 30 of that schedule), then samples 10 steps of size 5 starting at t = 45;
  the UNet is called with these small timesteps unchanged, the clean-latent estimate is clipped to
  [-1, 1] and the last step goes to abar = 1.
* ``dual``: dual conditions (DDIB): DDIM inversion of the source latent to ``t*`` conditioned on the
  source's own style (its latent as the condition), DDIM sampling conditioned on the target's.
* ``sdedit``: stochastic partial noising (SDEdit): ``z_t* = sqrt(abar) z + sqrt(1 - abar) eps`` with seeded
  noise, then DDIM sampling under the target condition over ``sampling_steps`` calls (one call returns the
  model's clean-latent estimate, the posterior mean; more calls give a sharper sample).
* ``adain``: no diffusion: the decoded fused latent (the floor the diffusion model has to beat).

``guidance`` w > 0 (full, dual, sdedit) steers every sampling step away from the source's style and toward
the target's, as classifier-free guidance does with a negative condition: the sampler uses
``eps(z, target) + w * (eps(z, target) - eps(z, source))``, whose extra term is (up to scale) the gradient of
the model's log-ratio of target to source style; the source is the input's own latent or, with
``guidance_source="site"``, the prototype of the trained site nearest to it. Each sampling step then costs two
UNet calls. Measured on the validation heads it does not help (benchmarks/RESULTS.md, "Does the diffusion
model read its condition?"), so no bundle uses it.

``detail`` re-injects the input's high frequencies that the autoencoder loses, ``x - D(E(x))`` times the
gain (toward a reference image or a site added without training from few images ``reference_detail`` when it
is set; at gain 1 the output is the input plus the change the model makes, ``x + D(z) - D(E(x))``, and the
autoencoder's own loss cancels; measured on held-out heads, a reference from an unseen scanner, and a site
made of its few scans, lose less often with more of the detail, while toward a trained site the gain chosen for
the sites stays: benchmarks/RESULTS.md, "Detail toward a reference image" and "A target scanner known from a few
scans");
``calibrate`` maps the output's brain intensities by quantiles onto the target's histogram (the site's
stored training histogram, or the reference image's own). A reference image's histogram is one head's, and
carries that head's tissue proportions as well as its scanner, and so does the mean of a few heads' of a site
added without training (``train --add-site-prototypes``). Toward these the calibrated output is blended with the
uncalibrated one, ``(1 - w) * out + w * calibrated``, with ``w = 1 - (1 - reference_calibration) / n`` for n heads
(:meth:`Regime.calibration_weight`): ``reference_calibration`` toward a reference image, 0.75 toward a site added
from 2 scans with the default 0.5 (benchmarks/RESULTS.md, "A target scanner known from a few scans"). A site the
networks were trained on is calibrated fully: its histogram averages its whole training set, and the site
classifier reads any part of the source's histogram left in the output (weight 0.985 for 34 images raised it
from 0.27 to 0.70 on the test heads). ``spectrum`` (an exponent, 0: off)
runs before the histogram's calibration: it filters the output by the band gains that would take the input's
power in each band of spatial frequency to the target's (the site's stored mean spectrum, or the reference
image's own), which blurs toward a blurrier site and sharpens toward a sharper one
(:mod:`hcld_bids.model.spectrum`). The input's band powers are measured after mapping it onto the target's
histogram (band powers depend on contrast), and on the input rather than the output: the autoencoder has
already smoothed away part of a noisy input's noise, and a gain measured on the output would put it back
(validation heads: 0.866 against 0.863; benchmarks/RESULTS.md). A spectrum averaged over few heads carries
their anatomy, so its exponent shrinks toward ``spectrum * reference_calibration`` for one head
(:meth:`Regime.spectrum_exponent`).

``restore`` (a weight, 0: off) runs first, on the input: the bundle's restoration prior
(:mod:`hcld_bids.model.restore`, a small 3D network trained on single images re-rendered with random scanner
noise and blur) removes the source scanner's noise and blur, ``x + w * (R(x) - x)``; every later step (the
autoencoder path, the detail, the gain of the spectral calibration) sees the restored input, so the spectral
calibration puts back the target's own blur. With ``restore_noisy`` set, an input whose estimated noise
(:func:`hcld_bids.model.restore.estimate_noise`, in the model grid's intensity units) is above
``noise_threshold`` is restored with the weight ``restore_noisy`` instead: a clean source loses a little of its
own detail to the prior and a noisy one gains, so the weight follows the image (the weight and the estimate of
each image of the last call are in :attr:`Harmonizer.last_restoration`). Bundles without a restoration prior
refuse a regime that asks for it.

Cost decisions: a target style is encoded once and cached (by the sha256 of the reference volume); a site
prototype needs no encoding at all; only the final latent is decoded; on CPU the networks run in
``channels_last_3d`` under ``torch.inference_mode``; on CUDA they run under bf16 autocast and volumes can
be batched (:meth:`Harmonizer.harmonize_batch`).

On CUDA only (the CPU path is unchanged): the convolution and linear weights of the frozen networks are cast
to bfloat16 once, when the :class:`Harmonizer` is made (autocast would cast every weight at every call);
each UNet call of a given batch and latent grid is captured once in a CUDA graph (:class:`StaticUNetCall`)
and replayed at every DDIM step, so a step costs one graph launch instead of hundreds of kernel launches
(at 2 mm a UNet call took 5-10 ms of launch overhead whatever the precision); the autoencoder runs at most
:data:`CUDA_AUTOENCODER_BATCH` volumes at a time (memory); SDEdit draws each volume's noise from the seed
alone, so that a volume gets the same noise in a batch as on its own.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from ..manifest import added_sites
from .ddim import NoiseSchedule
from .errors import InputVolumeError, UnknownSiteError
from .fusion import adain, channel_stats
from .restore import estimate_noise, restore_volume
from .spectrum import band_power, match_spectrum

ProgressFn = Callable[[str, int, int], None]
LOGGER = logging.getLogger("hcld_bids.model")
#: Most volumes the autoencoder encodes or decodes at once on CUDA (its full-resolution activations dominate
#: the memory of a batch; the UNet runs the whole batch).
CUDA_AUTOENCODER_BATCH = 4

REGIMES = ("full", "research", "dual", "sdedit", "adain")
#: Bins of the brain-intensity histograms used for calibration (the same as the reports' site histograms).
HISTOGRAM_BINS = 64
#: The research code's inference schedule: built with 50 training steps; 30 inversion steps of size 1,
#: then 10 sampling steps of size 5 from t = 45.
RESEARCH_TRAIN_STEPS, RESEARCH_INVERSION, RESEARCH_SAMPLING = 50, 30, 10


@dataclass(frozen=True)
class Regime:
    """How the diffusion model moves the latent at inference (see the module docstring).

    Attributes:
        kind: one of :data:`REGIMES`.
        strength: fraction of the diffusion ``t* / (T - 1)`` in (0, 1] (full, dual, sdedit).
        inversion_steps / sampling_steps: UNet calls of each half (sdedit only samples).
        detail: gain of the re-injected input detail ``x - D(E(x))`` (0: none).
        reference_detail: the gain instead of ``detail`` when the target is a reference image or a site added
            without training (None: ``detail``;
            :meth:`detail_gain`).
        calibrate: quantile-map the output's brain intensities onto the target's histogram.
        reference_calibration: weight ``w`` in [0, 1] of that calibration when the target is a reference image
            (``(1 - w) * out + w * calibrated``); toward a site added from n images without training the weight
            is ``1 - (1 - w) / n``, toward a trained site 1 (:meth:`calibration_weight`).
        spectrum: exponent of the spectral calibration before the histogram's (0: none; 1: the output's band
            powers become the target's, :func:`hcld_bids.model.spectrum.match_spectrum`), scaled down for a
            target spectrum averaged over few images (:meth:`spectrum_exponent`).
        z0_clip: clamp each clean-latent estimate to ``[-z0_clip, z0_clip]`` (full, dual, sdedit).
        readapt_condition: before every UNet call replace the condition by ``AdaIN(condition, z)``.
        guidance: weight ``w`` of the step away from the source's own style at every sampling step (0: off).
        guidance_source: the condition that stands for the source's style in the guidance: ``"own"`` (the
            source's own latent) or ``"site"`` (the prototype of the trained site whose channel statistics are
            closest to the source latent's).
        restore: weight in [0, 1] of the bundle's restoration prior on the input before everything else
            (``x + w * (R(x) - x)``, :mod:`hcld_bids.model.restore`; 0: off).
        restore_noisy: the weight instead of ``restore`` for an input whose estimated noise is above
            ``noise_threshold`` (None: ``restore`` for every input; :meth:`restore_weight`).
        noise_threshold: the noise (standard deviation in the model grid's intensity units) above which
            ``restore_noisy`` applies.
    """

    kind: str = "full"
    strength: float = 1.0
    inversion_steps: int = 30
    sampling_steps: int = 10
    detail: float = 0.0
    reference_detail: float | None = None
    calibrate: bool = False
    reference_calibration: float = 1.0
    spectrum: float = 0.0
    z0_clip: float | None = None
    readapt_condition: bool = False
    guidance: float = 0.0
    guidance_source: str = "own"
    restore: float = 0.0
    restore_noisy: float | None = None
    noise_threshold: float = 0.0

    def __post_init__(self):
        if self.kind not in REGIMES:
            raise ValueError(f"unknown inference regime {self.kind!r}; choose one of {', '.join(REGIMES)}")
        if not 0.0 < float(self.strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.inversion_steps < 1 or self.sampling_steps < 1:
            raise ValueError("inversion_steps and sampling_steps must be at least 1")
        if self.detail < 0:
            raise ValueError(f"detail gain must be non-negative, got {self.detail}")
        if self.reference_detail is not None and not float(self.reference_detail) >= 0:
            raise ValueError(f"reference_detail must be non-negative or unset, got {self.reference_detail}")
        if not 0.0 <= float(self.reference_calibration) <= 1.0:
            raise ValueError(f"reference_calibration must be in [0, 1], got {self.reference_calibration}")
        if float(self.spectrum) < 0:
            raise ValueError(f"spectrum exponent must be non-negative, got {self.spectrum}")
        if float(self.guidance) < 0:
            raise ValueError(f"guidance must be non-negative, got {self.guidance}")
        if not 0.0 <= float(self.restore) <= 1.0:
            raise ValueError(f"restore must be in [0, 1], got {self.restore}")
        if self.restore_noisy is not None and not 0.0 <= float(self.restore_noisy) <= 1.0:
            raise ValueError(f"restore_noisy must be in [0, 1] or unset, got {self.restore_noisy}")
        if not float(self.noise_threshold) >= 0:
            raise ValueError(f"noise_threshold must be non-negative, got {self.noise_threshold}")
        if self.guidance_source not in ("own", "site"):
            raise ValueError(f"guidance_source must be 'own' or 'site', got {self.guidance_source!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Regime":
        """A regime from a manifest's ``inference`` block (unknown keys are an error; missing keys default)."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown inference settings {unknown}; known: {sorted(names)}")
        return cls(**d)

    @property
    def restores(self) -> bool:
        """Whether any input can be restored (a weight above 0 for clean or for noisy inputs)."""
        return float(self.restore) > 0 or float(self.restore_noisy or 0.0) > 0

    @property
    def adaptive_restoration(self) -> bool:
        """Whether the restoration weight depends on the input's estimated noise."""
        return self.restore_noisy is not None and float(self.restore_noisy) != float(self.restore)

    def restore_weight(self, noise: float | None) -> float:
        """The restoration weight of an input with estimated noise ``noise``: ``restore_noisy`` above
        ``noise_threshold``, otherwise (and without an estimate) ``restore``."""
        if self.adaptive_restoration and noise is not None and float(noise) > float(self.noise_threshold):
            return float(self.restore_noisy)
        return float(self.restore)

    def detail_gain(self, few_heads: bool) -> float:
        """Gain of the re-injected input detail: ``reference_detail`` when it is set and the target is known from
        few heads (``few_heads``: a reference image, or a site added without training; the target's
        :attr:`Style.calibration_images` is not None), otherwise ``detail``."""
        if few_heads and self.reference_detail is not None:
            return float(self.reference_detail)
        return float(self.detail)

    def calibration_weight(self, images: int | None) -> float:
        """Weight of the histogram calibration toward a histogram that averages ``images`` heads: 1 for a
        reference image, n for a site added from n images without training, None for a site the networks were
        trained on (:func:`added_site_images`). 0 without calibration, 1 toward a trained site, otherwise
        ``1 - head_share / images``: one head's histogram carries its anatomy as well as its scanner, and that
        part averages out over heads; a reference gets ``reference_calibration``, a site added from 2 scans 0.75
        (with the default 0.5)."""
        if not self.calibrate:
            return 0.0
        if images is None:
            return 1.0
        return 1.0 - self.head_share / max(int(images), 1)

    @property
    def head_share(self) -> float:
        """The share of the calibrations toward one head that its anatomy takes, ``1 - reference_calibration``
        (see :meth:`calibration_weight` and :meth:`spectrum_exponent`)."""
        return 1.0 - float(self.reference_calibration)

    def spectrum_exponent(self, images: int) -> float:
        """Exponent of the spectral calibration toward a spectrum averaged over ``images`` heads (1 for a
        reference image): ``spectrum * (1 - head_share / images)``, as for the histogram's weight
        (:meth:`calibration_weight`): a reference gets ``spectrum * reference_calibration``, a site of 33 images
        98.5 % of ``spectrum``."""
        return float(self.spectrum) * (1.0 - self.head_share / max(int(images), 1))

    def t_end(self, num_train_timesteps: int) -> int:
        return max(1, int(round(float(self.strength) * (num_train_timesteps - 1))))

    def unet_calls(self) -> int:
        """UNet evaluations per volume."""
        if self.kind == "adain":
            return 0
        per_step = 2 if self.guidance > 0 else 1
        if self.kind == "sdedit":
            return per_step * self.sampling_steps
        if self.kind == "research":
            return RESEARCH_INVERSION + RESEARCH_SAMPLING
        return self.inversion_steps + per_step * self.sampling_steps


def brain_histogram(vol: np.ndarray, mask: np.ndarray, bins: int = HISTOGRAM_BINS):
    """Density of the brain intensities on ``bins`` equal bins of [0, 1]: ``(edges, density)``."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    values = np.clip(np.asarray(vol, dtype=np.float64)[np.asarray(mask) > 0], 0.0, 1.0)
    density, _ = np.histogram(values, bins=edges, density=True)
    return edges, density


def match_histogram(vol: np.ndarray, mask: np.ndarray, edges, density) -> np.ndarray:
    """Map the intensities inside ``mask`` by quantiles onto the distribution ``density`` on ``edges``
    (ranks, so ties keep their order of appearance); voxels outside ``mask`` are returned unchanged."""
    edges, density = np.asarray(edges, float), np.clip(np.asarray(density, float), 0.0, None)
    cdf = np.concatenate([[0.0], np.cumsum(density * np.diff(edges))])
    if not cdf[-1] > 0:
        raise ValueError("target histogram is empty")
    cdf /= cdf[-1]
    out = np.array(vol, dtype=np.float32, copy=True)
    inside = np.asarray(mask) > 0
    values = out[inside]
    if values.size == 0:
        return out
    ranks = (np.argsort(np.argsort(values, kind="stable"), kind="stable") + 0.5) / values.size
    out[inside] = np.interp(ranks, cdf, edges).astype(np.float32)
    return out


@dataclass(frozen=True)
class Style:
    """A target style.

    Attributes:
        latent: ``(1, C, d, h, w)`` scaled latent, the UNet condition.
        channel_mean / channel_std: ``(C,)`` statistics imposed on the source latent by AdaIN.
        source: ``"site:<label>"`` or ``"reference:<sha256 of the reference volume>"`` (for provenance).
        histogram: ``(edges, density)`` of the target's brain intensities on [0, 1] (for calibration), or None.
        spectrum: band powers of the target's brain (:func:`hcld_bids.model.spectrum.band_power`; for the
            spectral calibration), or None.
        images: how many images the target's histogram and spectrum average (1 for a reference image).
        trained_site: the target is a site the networks were trained on (calibrated fully; not a reference image
            nor a site added without training, :func:`added_site_images`).
    """

    latent: torch.Tensor
    channel_mean: torch.Tensor
    channel_std: torch.Tensor
    source: str
    histogram: tuple | None = None
    spectrum: np.ndarray | None = None
    images: int = 1
    trained_site: bool = False

    @property
    def calibration_images(self) -> int | None:
        """The heads whose anatomy the target's histogram carries, for :meth:`Regime.calibration_weight` and
        :meth:`Regime.detail_gain`: ``images``, or None for a trained site."""
        return None if self.trained_site else self.images


def site_images(manifest: dict, site: str | None) -> int:
    """How many images a site's stored histogram and spectrum average (its ``n_images``, else its prototype's;
    1 when the manifest does not say)."""
    entry = (manifest.get("sites") or {}).get(site) or {}
    return int(entry.get("n_images") or (entry.get("prototype") or {}).get("n_images") or 1)


def added_site_images(manifest: dict, site: str | None) -> int | None:
    """The image count of ``site`` when it was added without training (``train --add-site-prototypes`` flags it
    ``added_without_training``: :func:`hcld_bids.manifest.added_sites`), None for a site the networks were trained
    on (calibrated fully, :meth:`Regime.calibration_weight`)."""
    return site_images(manifest, site) if site in added_sites(manifest) else None


def calibrate(vol: np.ndarray, mask: np.ndarray, histogram, weight: float = 1.0) -> np.ndarray:
    """The calibration step: ``vol`` with its intensities inside ``mask`` quantile-mapped onto ``histogram``
    (``(edges, density)``), blended as ``(1 - weight) * vol + weight * mapped`` (weight 1: the mapped image)."""
    mapped = match_histogram(vol, mask, *histogram)
    if weight >= 1.0:
        return mapped
    return ((1.0 - weight) * np.asarray(vol, np.float32) + weight * mapped).astype(np.float32)


def _volume_sha256(vol: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((vol.shape, vol.dtype.str)).encode())
    h.update(np.ascontiguousarray(vol).tobytes())
    return h.hexdigest()


def cast_for_autocast(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Cast the weights and biases of every convolution and linear layer of a frozen network to ``dtype``, once.

    Autocast casts float32 weights to bf16 at every call; weights already in bf16 are used as they are, which
    gives the same values without the copies. Normalisation layers keep their float32 parameters (autocast
    runs normalisation in float32), and so do layers flagged ``keep_float32`` (an autoencoder's linear path, which
    carries the image's whole intensity). Returns the number of tensors cast.
    """
    cast = 0
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv3d, torch.nn.Linear)) and not getattr(layer, "keep_float32", False):
            for param in layer.parameters(recurse=False):
                if param.dtype != dtype:
                    param.data = param.data.to(dtype)
                    cast += 1
    return cast


def per_volume_noise(shape, seed: int) -> torch.Tensor:
    """Standard normal noise of ``shape`` ``(N, ...)`` whose every volume is drawn on the CPU from ``seed``
    alone: volume ``i`` equals the noise a batch of one gets, whatever ``N`` and ``i``."""
    one = (1, *tuple(shape)[1:])
    return torch.cat([torch.randn(one, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
                      for _ in range(int(shape[0]))])


def guided(target_model, own_model, weight: float):
    """``eps_target + weight * (eps_target - eps_own)``: the target's prediction pushed away from the
    source's own (two calls per step)."""
    def eps_model(zt: torch.Tensor, t) -> torch.Tensor:
        eps = target_model(zt, t)
        return eps.add_(eps - own_model(zt, t), alpha=float(weight))

    return eps_model


def capture_cuda_graph(fn: Callable[[], torch.Tensor], warmup: int = 2):
    """Capture ``fn`` (which reads and writes only tensors that outlive the capture) in a CUDA graph.

    ``fn`` runs ``warmup`` times on a side stream first (cuDNN and cuBLAS choose and initialise their kernels
    outside the capture, as PyTorch's documentation asks). Returns ``(replay, output)``: each ``replay()``
    reruns the captured kernels and overwrites ``output`` in place.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph.replay, output


class StaticUNetCall:
    """A UNet call of one batch and latent grid, run from static buffers.

    The noisy latent ``z``, the condition ``c`` and the timestep ``t`` of each call are copied into buffers of
    fixed shape and address, the captured call is replayed, and a copy of its output is returned (the next
    replay overwrites the static output). The condition is copied only when a different tensor is passed
    (within a volume's DDIM loop it is the same tensor at every step).

    Args:
        call: ``call(z, t, c) -> eps`` (float32), the eager UNet call; ``t`` is a float tensor ``(N,)``.
        z, c: example latent and condition; the buffers take their shape, dtype, device and memory layout.
        capture: ``capture(fn) -> (replay, output)``; :func:`capture_cuda_graph` on CUDA (the tests replay on
            the CPU with a capture that calls ``fn`` again and copies its result into ``output``).
    """

    def __init__(self, call, z: torch.Tensor, c: torch.Tensor, capture=capture_cuda_graph) -> None:
        self.z = torch.empty_like(z)
        self.c = torch.empty_like(c)
        self.t = torch.zeros(z.shape[0], dtype=torch.float32, device=z.device)
        self.z.copy_(z)
        self.c.copy_(c)
        self._condition = c
        self.replay, self.output = capture(lambda: call(self.z, self.t, self.c))

    def __call__(self, z: torch.Tensor, t, c: torch.Tensor) -> torch.Tensor:
        self.z.copy_(z)
        if c is not self._condition:
            self.c.copy_(c)
            self._condition = c
        self.t.fill_(float(t))
        self.replay()
        return self.output.clone()


class Harmonizer:
    """Runs the harmonization path of a :class:`~hcld_bids.model.bundle.ModelBundle`.

    Args:
        bundle: a loaded bundle (its networks are moved to ``device`` and frozen).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        autocast: run the networks under bf16 autocast; default: on for CUDA, off for CPU (bf16 convolutions
            are slower than float32 on CPUs without AVX-512 BF16).
        channels_last: use ``channels_last_3d`` activations (default on).
        cuda_graphs: replay each UNet call from a CUDA graph (:class:`StaticUNetCall`); default: on for CUDA.
            CUDA only.
    """

    def __init__(self, bundle, device="cpu", autocast: bool | None = None, channels_last: bool = True,
                 cuda_graphs: bool | None = None) -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.autocast = (self.device.type == "cuda") if autocast is None else bool(autocast)
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.autoencoder = bundle.autoencoder.to(self.device, memory_format=self.memory_format).eval()
        self.unet = bundle.unet.to(self.device, memory_format=self.memory_format).eval()
        self.autoencoder.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.schedule = bundle.schedule
        self.scale_factor = float(bundle.scale_factor)
        self.factor = self.autoencoder.downsampling * self.unet.downsampling
        self._style_cache: dict[str, Style] = {}
        #: seconds spent in each stage by the last harmonize call: restore, encode, inversion, sampling, decode
        self.last_timings: dict[str, float] = {}
        #: per volume of the last harmonize call: ``{"weight": restoration weight, "noise": estimated noise or
        #: None}`` (the noise is estimated only when the regime's weight depends on it)
        self.last_restoration: list[dict] = []
        #: the bundle's default inference regime (its manifest's ``inference`` block; the full inversion with
        #: 30 + 10 steps for bundles without one)
        self.default_regime = Regime.from_dict(bundle.manifest.get("inference"))
        cuda = self.device.type == "cuda"
        if cuda_graphs and not cuda:
            raise ValueError("cuda_graphs needs a CUDA device")
        #: UNet calls replayed from CUDA graphs (CUDA only)
        self.cuda_graphs = cuda if cuda_graphs is None else bool(cuda_graphs)
        #: ``capture(fn) -> (replay, output)`` of the static UNet calls (:func:`capture_cuda_graph`)
        self._capture = capture_cuda_graph
        #: (latent shape, condition shape, dtype) -> StaticUNetCall, or None where the capture failed
        self._static_calls: dict = {}
        #: the bundle's restoration prior (None without one); float32 on every device
        self.restoration = None
        if getattr(bundle, "restoration", None) is not None:
            self.restoration = bundle.restoration.to(self.device).eval().requires_grad_(False)
        if cuda and self.autocast:
            cast_for_autocast(self.autoencoder)
            cast_for_autocast(self.unet)

    # ----------------------------------------------------------------------------------- helpers

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _check_volume(self, vol) -> np.ndarray:
        if isinstance(vol, torch.Tensor):
            vol = vol.detach().cpu().numpy()
        arr = np.asarray(vol)
        if arr.ndim != 3:
            raise InputVolumeError(f"expected a 3D volume (D, H, W) on the model grid, got shape {arr.shape}; "
                                   f"preprocess the image to the bundle's grid first")
        if any(s % self.factor for s in arr.shape):
            raise InputVolumeError(f"volume grid {arr.shape} is not divisible by {self.factor}; crop or pad it "
                                   f"to the bundle's grid")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise InputVolumeError("volume contains NaN or infinite values; check the preprocessed image")
        return arr

    def _to_device(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(arrays)[:, None])
        return x.to(self.device).contiguous(memory_format=self.memory_format)

    def _chunks(self, n: int):
        """Slices of a batch of ``n`` the autoencoder runs at once: all of it, except on CUDA
        (:data:`CUDA_AUTOENCODER_BATCH`)."""
        step = CUDA_AUTOENCODER_BATCH if self.device.type == "cuda" else n
        return [slice(i, i + step) for i in range(0, n, max(1, step))]

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``sf * E(x)``: ``(N, 1, D, H, W) -> (N, C, d, h, w)`` float32."""
        if self.device.type == "cuda" and x.shape[0] > CUDA_AUTOENCODER_BATCH:
            return torch.cat([self.encode(x[part]) for part in self._chunks(x.shape[0])])
        with self._autocast():
            z = self.autoencoder.encode(x)
        return z.float().mul_(self.scale_factor)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z / sf)``: ``(N, C, d, h, w) -> (N, 1, D, H, W)`` float32."""
        if self.device.type == "cuda" and z.shape[0] > CUDA_AUTOENCODER_BATCH:
            return torch.cat([self.decode(z[part]) for part in self._chunks(z.shape[0])])
        with self._autocast():
            x = self.autoencoder.decode((z / self.scale_factor).contiguous(memory_format=self.memory_format))
        return x.float()

    # ----------------------------------------------------------------------------------- styles

    def style_from_site(self, name: str) -> Style:
        """The stored prototype of a site."""
        if name not in self.bundle.prototypes:
            known = ", ".join(sorted(self.bundle.prototypes)) or "none"
            raise UnknownSiteError(f"unknown target site {name!r}; sites of model {self.bundle.path}: {known}")
        stats = self.bundle.prototype_stats[name]
        site = (self.bundle.manifest.get("sites") or {}).get(name) or {}
        hist = site.get("intensity_histogram")
        histogram = (np.asarray(hist["edges"], float), np.asarray(hist["density"], float)) if hist else None
        spectrum = site.get("power_spectrum")
        return Style(latent=self.bundle.prototypes[name].to(self.device, torch.float32),
                     channel_mean=stats["channel_mean"].to(self.device), channel_std=stats["channel_std"].to(self.device),
                     source=f"site:{name}", histogram=histogram,
                     spectrum=None if spectrum is None else np.asarray(spectrum, float),
                     images=site_images(self.bundle.manifest, name),
                     trained_site=added_site_images(self.bundle.manifest, name) is None)

    def style_from_volume(self, vol) -> Style:
        """The style of a preprocessed reference volume (encoded once per distinct volume)."""
        arr = self._check_volume(vol)
        key = _volume_sha256(arr)
        if key not in self._style_cache:
            z = self.encode(self._to_device([arr]))
            mean, std = channel_stats(z)
            self._style_cache[key] = Style(latent=z, channel_mean=mean.flatten(), channel_std=std.flatten(),
                                           source=f"reference:{key}", histogram=brain_histogram(arr, arr > 0),
                                           spectrum=band_power(arr, arr > 0))
        return self._style_cache[key]

    def nearest_sites(self, z: torch.Tensor) -> list[str]:
        """For each latent of ``z`` (scaled, ``(N, C, d, h, w)``) the trained site whose prototype's channel
        statistics are closest (squared differences of the channel means and of the log standard deviations)."""
        from .unet import condition_style

        names = sorted(self.bundle.prototypes)
        stats = [self.bundle.prototype_stats[s] for s in names]
        sites = torch.stack([torch.cat([p["channel_mean"].float(), p["channel_std"].float().log()]) for p in stats])
        return [names[i] for i in torch.cdist(condition_style(z).cpu(), sites.cpu()).argmin(1).tolist()]

    # ----------------------------------------------------------------------------------- harmonize

    def resolve_regime(self, regime: Regime | str | None = None, **overrides) -> Regime:
        """The regime to run: ``regime`` (a :class:`Regime`, a kind name taking the bundle default's other
        settings, or None for the bundle default) with the non-None ``overrides`` applied."""
        base = self.default_regime
        if isinstance(regime, str):
            base = replace(base, kind=regime)
        elif regime is not None:
            base = regime
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **changes) if changes else base

    def harmonize(self, vol, style: Style, *, regime: Regime | str | None = None, inversion_steps: int | None = None,
                  sampling_steps: int | None = None, strength: float | None = None, seed: int = 0, mask=None,
                  readapt_condition: bool | None = None, progress: ProgressFn | None = None,
                  t_end: int | None = None, z0_clip: float | None = None) -> np.ndarray:
        """Harmonize one ``(D, H, W)`` float32 volume in [0, 1]; returns a float32 array of the same shape.

        Args:
            style: from :meth:`style_from_site` or :meth:`style_from_volume`.
            regime: how the diffusion model is used (default: the bundle's ``inference`` block); the keyword
                arguments below, when given, override its fields.
            inversion_steps / sampling_steps: UNet calls of DDIM inversion and of DDIM sampling.
            strength: fraction of the diffusion, ``t* = round(strength * (T - 1))``.
            seed: seeds the SDEdit noise and torch's generators during the call, without disturbing the
                caller's (the other regimes, posterior mean and DDIM with eta = 0, draw no random numbers).
            mask: optional ``(D, H, W)`` brain mask; the output is zero outside it, and calibration uses it
                (default: ``vol > 0``).
            readapt_condition: before every UNet call replace the condition by ``AdaIN(condition, z)``.
            progress: ``progress(stage, done, total)`` with stage ``"inversion"`` or ``"sampling"``.
            t_end: last timestep of the inversion and first of the sampling; overrides ``strength``.
            z0_clip: clamp the clean-latent estimate of every DDIM step to ``[-z0_clip, z0_clip]``.
        """
        masks = None if mask is None else [mask]
        return self.harmonize_batch([vol], style, regime=regime, inversion_steps=inversion_steps,
                                    sampling_steps=sampling_steps, strength=strength, seed=seed, masks=masks,
                                    readapt_condition=readapt_condition, progress=progress, t_end=t_end,
                                    z0_clip=z0_clip)[0]

    def harmonize_batch(self, vols: Sequence, style: Style, *, regime: Regime | str | None = None,
                        inversion_steps: int | None = None, sampling_steps: int | None = None,
                        strength: float | None = None, seed: int = 0, masks: Sequence | None = None,
                        readapt_condition: bool | None = None, progress: ProgressFn | None = None,
                        t_end: int | None = None, z0_clip: float | None = None) -> list[np.ndarray]:
        """Harmonize several volumes of one grid in one batch (worth it on a GPU); see :meth:`harmonize`."""
        regime = self.resolve_regime(regime, inversion_steps=inversion_steps, sampling_steps=sampling_steps,
                                     strength=strength, readapt_condition=readapt_condition, z0_clip=z0_clip)
        arrays = [self._check_volume(v) for v in vols]
        if len({a.shape for a in arrays}) != 1:
            raise InputVolumeError("all volumes of a batch must have the same grid")
        if masks is not None:
            if len(masks) != len(arrays):
                raise InputVolumeError("give one mask per volume")
            masks = [None if m is None else np.asarray(m) for m in masks]
            for m in masks:
                if m is not None and m.shape != arrays[0].shape:
                    raise InputVolumeError(f"mask shape {m.shape} differs from the volume's {arrays[0].shape}")
        latent = self.autoencoder.latent_shape(arrays[0].shape)
        if tuple(style.latent.shape[1:]) != tuple(latent):
            raise InputVolumeError(f"style latent {tuple(style.latent.shape[1:])} does not match the volume's latent "
                                   f"{tuple(latent)}; the reference/prototype was made on another grid")
        if regime.calibrate and style.histogram is None:
            raise InputVolumeError(f"calibration needs the target's intensity histogram, and {style.source} has "
                                   f"none; use a bundle whose manifest stores the site's histogram")
        if regime.spectrum > 0 and style.spectrum is None:
            raise InputVolumeError(f"spectral calibration needs the target's power spectrum, and {style.source} has "
                                   f"none; add the site's prototype again with this version of hcld-bids, or set "
                                   f"the regime's spectrum to 0")
        if regime.restores and self.restoration is None:
            raise InputVolumeError(f"the regime restores its input (restore={regime.restore}, restore_noisy="
                                   f"{regime.restore_noisy}) and model {self.bundle.path} has no restoration "
                                   f"prior; set the regime's restore to 0 and restore_noisy to null")
        t_star = regime.t_end(self.schedule.num_train_timesteps) if t_end is None else int(t_end)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self._harmonize_batch(arrays, style, regime, t_star, masks, progress, seed)

    def _unet_eps(self, zt: torch.Tensor, t, c: torch.Tensor) -> torch.Tensor:
        """One UNet call as the eager path makes it (the call a :class:`StaticUNetCall` captures)."""
        with self._autocast():
            eps = self.unet(zt, t, c)
        return eps.float()

    def _static_call(self, zt: torch.Tensor, c: torch.Tensor):
        """The :class:`StaticUNetCall` of this batch and grid (captured at its first use), or None when the
        capture failed (then the eager call is used, with one warning)."""
        key = (tuple(zt.shape), tuple(c.shape), zt.dtype)
        if key not in self._static_calls:
            try:
                z = zt.contiguous(memory_format=self.memory_format)
                self._static_calls[key] = StaticUNetCall(self._unet_eps, z, c.to(z.dtype), capture=self._capture)
            except Exception as err:  # noqa: BLE001 - any failure of the capture falls back to the eager call
                LOGGER.warning("CUDA graph capture of the UNet call failed for latent %s (%s: %s); running it "
                               "without a graph", tuple(zt.shape), type(err).__name__, err)
                self._static_calls[key] = None
        return self._static_calls[key]

    def _static_eps_model(self, cond: torch.Tensor, readapt: bool):
        """The eps model of :meth:`_eps_model` replayed from a :class:`StaticUNetCall` (CUDA graphs)."""
        def eps_model(zt: torch.Tensor, t) -> torch.Tensor:
            c = adain(cond, zt) if readapt else cond
            call = self._static_call(zt, c)
            if call is None:
                return self._unet_eps(zt.contiguous(memory_format=self.memory_format), t, c)
            return call(zt, t, c)

        return eps_model

    def _eps_model(self, cond: torch.Tensor, readapt: bool):
        if self.cuda_graphs:
            return self._static_eps_model(cond, readapt)

        def eps_model(zt: torch.Tensor, t) -> torch.Tensor:
            c = adain(cond, zt) if readapt else cond
            with self._autocast():
                eps = self.unet(zt.contiguous(memory_format=self.memory_format), t, c)
            return eps.float()

        return eps_model

    def _sdedit_noise(self, shape, seed: int) -> torch.Tensor:
        """SDEdit's noise, drawn on the CPU from ``seed``: for the whole batch at once on the CPU; on CUDA for
        each volume from the seed alone, so that a volume gets the same noise in any batch as on its own."""
        if self.device.type != "cuda":
            gen = torch.Generator().manual_seed(int(seed))
            return torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device)
        return per_volume_noise(shape, seed).to(self.device)

    def _condition(self, latent: torch.Tensor, n: int) -> torch.Tensor:
        return latent.to(self.device).expand(n, -1, -1, -1, -1).contiguous(memory_format=self.memory_format)

    def _research_path(self, z, eps_model, report, clip: float = 1.0):
        """The research code's mismatched schedule (module docstring): invert 30 x 1, sample 10 x 5 from 45."""
        abar = NoiseSchedule(RESEARCH_TRAIN_STEPS, **{k: v for k, v in self.schedule.config.items()
                                                      if k != "num_train_timesteps"}).alphas_cumprod

        def move(z, eps, a_t, a_s):
            z0 = ((z - (1.0 - a_t) ** 0.5 * eps) / a_t ** 0.5).clamp_(-clip, clip)
            return z0.mul_(a_s ** 0.5).add_(eps, alpha=(1.0 - a_s) ** 0.5)

        inv = report("inversion", RESEARCH_INVERSION)
        for i, t in enumerate(range(RESEARCH_INVERSION)):
            z = move(z, eps_model(z, t), float(abar[t]), float(abar[t + 1]))
            if inv:
                inv(i)
        stride = RESEARCH_TRAIN_STEPS // RESEARCH_SAMPLING
        samp = report("sampling", RESEARCH_SAMPLING)
        for i, t in enumerate(range(stride * (RESEARCH_SAMPLING - 1), -1, -stride)):
            a_s = float(abar[t - stride]) if t - stride >= 0 else 1.0
            z = move(z, eps_model(z, t), float(abar[t]), a_s)
            if samp:
                samp(i)
        return z

    def restore(self, arrays: Sequence[np.ndarray], brains: Sequence[np.ndarray],
                weights: float | Sequence[float]) -> list[np.ndarray]:
        """``x + w * (R(x) - x)`` inside each boolean brain mask (zero outside it), with the bundle's restoration
        prior; ``weights``: one for all volumes or one per volume (a volume of weight 0 is passed unchanged)."""
        if np.isscalar(weights):
            weights = [float(weights)] * len(arrays)
        return [arr if w <= 0 else
                np.where(brain, arr + float(w) * (restore_volume(self.restoration, arr, brain, self.device) - arr),
                         0.0).astype(np.float32) for arr, brain, w in zip(arrays, brains, weights)]

    def _harmonize_batch(self, arrays, style, regime: Regime, t_star: int, masks, progress, seed) -> list[np.ndarray]:
        timings = {"restore": 0.0, "encode": 0.0, "inversion": 0.0, "sampling": 0.0, "decode": 0.0}

        def report(stage, total):
            return None if progress is None else (lambda i: progress(stage, i + 1, total))

        brains = [(a > 0) if masks is None or masks[i] is None else (masks[i] > 0) for i, a in enumerate(arrays)]
        t0 = time.perf_counter()
        noises = [estimate_noise(a, b) if regime.adaptive_restoration else None for a, b in zip(arrays, brains)]
        weights = [regime.restore_weight(n) for n in noises]
        self.last_restoration = [{"weight": w, "noise": n} for w, n in zip(weights, noises)]
        if any(w > 0 for w in weights):
            arrays = self.restore(arrays, brains, weights)
            self._sync()
            timings["restore"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        x = self._to_device(arrays)
        z_src = self.encode(x)
        self._sync()
        timings["encode"] = time.perf_counter() - t0

        with torch.inference_mode():
            n = z_src.shape[0]
            z = adain(z_src, (style.channel_mean, style.channel_std))
            cond = self._condition(style.latent, n)
            target_model = self._eps_model(cond, regime.readapt_condition)
            clip = regime.z0_clip
            kind = regime.kind
            guided_sampling = regime.guidance > 0 and kind in ("full", "dual", "sdedit")
            own = negative = None  # the source's own latent as condition; the source's style in the guidance
            if kind == "dual" or (guided_sampling and regime.guidance_source == "own"):
                own = negative = self._eps_model(z_src.clone().contiguous(memory_format=self.memory_format),
                                                 regime.readapt_condition)
            if guided_sampling and regime.guidance_source == "site":
                negative = self._eps_model(torch.cat([self._condition(self.bundle.prototypes[s], 1)
                                                      for s in self.nearest_sites(z_src)]), regime.readapt_condition)
            t0 = time.perf_counter()
            if kind == "full":
                z = self.schedule.invert(z, target_model, regime.inversion_steps, t_star,
                                         callback=report("inversion", regime.inversion_steps), clip=clip)
            elif kind == "dual":
                z = self.schedule.invert(z_src, own, regime.inversion_steps, t_star,
                                         callback=report("inversion", regime.inversion_steps), clip=clip)
            elif kind == "sdedit":
                noise = self._sdedit_noise(z.shape, seed)
                z = self.schedule.add_noise(z, noise, t_star)
            self._sync()
            timings["inversion"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if kind in ("full", "dual", "sdedit"):
                steps = min(regime.sampling_steps, t_star)
                sampler = guided(target_model, negative, regime.guidance) if guided_sampling else target_model
                z = self.schedule.sample(z, sampler, steps, t_star, callback=report("sampling", steps), clip=clip)
            elif kind == "research":
                z = self._research_path(z, target_model, report)
            self._sync()
            timings["sampling"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            out = self.decode(z)
            gain = regime.detail_gain(style.calibration_images is not None)
            if gain > 0:
                out.add_(x.float() - self.decode(z_src), alpha=gain)
            out = out.clamp_(0.0, 1.0)[:, 0].cpu().numpy()
            timings["decode"] = time.perf_counter() - t0
        self.last_timings = timings
        results = []
        for i, arr in enumerate(out):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            mask = masks[i] if masks is not None and masks[i] is not None else None
            brain = brains[i]
            exponent = regime.spectrum_exponent(style.images)
            if exponent > 0:  # the gain is the input's, in the target's intensity units (module docstring)
                source = np.asarray(arrays[i], np.float32)
                measure = source if style.histogram is None else match_histogram(source, brain, *style.histogram)
                arr = np.clip(match_spectrum(arr, brain, style.spectrum, exponent, measure=measure), 0.0, 1.0)
            if regime.calibrate:
                arr = calibrate(arr, brain, style.histogram, regime.calibration_weight(style.calibration_images))
            if mask is not None:
                arr[mask <= 0] = 0.0
            results.append(arr)
        return results
