"""Harmonize a preprocessed volume toward a target style.

Path per volume (method.md, "Inference"): encode ``z = sf * E(x)``; fuse ``z = AdaIN(z, style)``; DDIM
inversion over ``inversion_steps`` UNet calls conditioned on the style latent; DDIM sampling back over
``sampling_steps`` calls; decode ``D(z / sf)``; clamp to [0, 1]; zero outside the mask.

Cost decisions: a target style is encoded once and cached (by the sha256 of the reference volume); a site
prototype needs no encoding at all; only the final latent is decoded; on CPU the networks run in
``channels_last_3d`` under ``torch.inference_mode``; on CUDA they run under bf16 autocast and volumes can
be batched (:meth:`Harmonizer.harmonize_batch`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputVolumeError, UnknownSiteError
from .fusion import adain, channel_stats

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Style:
    """A target style.

    Attributes:
        latent: ``(1, C, d, h, w)`` scaled latent, the UNet condition.
        channel_mean / channel_std: ``(C,)`` statistics imposed on the source latent by AdaIN.
        source: ``"site:<label>"`` or ``"reference:<sha256 of the reference volume>"`` (for provenance).
    """

    latent: torch.Tensor
    channel_mean: torch.Tensor
    channel_std: torch.Tensor
    source: str


def _volume_sha256(vol: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((vol.shape, vol.dtype.str)).encode())
    h.update(np.ascontiguousarray(vol).tobytes())
    return h.hexdigest()


class Harmonizer:
    """Runs the harmonization path of a :class:`~hcld_bids.model.bundle.ModelBundle`.

    Args:
        bundle: a loaded bundle (its networks are moved to ``device`` and frozen).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        autocast: run the networks under bf16 autocast; default: on for CUDA, off for CPU (bf16 convolutions
            are slower than float32 on CPUs without AVX-512 BF16).
        channels_last: use ``channels_last_3d`` activations (default on).
    """

    def __init__(self, bundle, device="cpu", autocast: bool | None = None, channels_last: bool = True) -> None:
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
        #: seconds spent in each stage by the last harmonize call: encode, inversion, sampling, decode
        self.last_timings: dict[str, float] = {}

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

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``sf * E(x)``: ``(N, 1, D, H, W) -> (N, C, d, h, w)`` float32."""
        with self._autocast():
            z = self.autoencoder.encode(x)
        return z.float().mul_(self.scale_factor)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z / sf)``: ``(N, C, d, h, w) -> (N, 1, D, H, W)`` float32."""
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
        return Style(latent=self.bundle.prototypes[name].to(self.device, torch.float32),
                     channel_mean=stats["channel_mean"].to(self.device), channel_std=stats["channel_std"].to(self.device),
                     source=f"site:{name}")

    def style_from_volume(self, vol) -> Style:
        """The style of a preprocessed reference volume (encoded once per distinct volume)."""
        arr = self._check_volume(vol)
        key = _volume_sha256(arr)
        if key not in self._style_cache:
            z = self.encode(self._to_device([arr]))
            mean, std = channel_stats(z)
            self._style_cache[key] = Style(latent=z, channel_mean=mean.flatten(), channel_std=std.flatten(),
                                           source=f"reference:{key}")
        return self._style_cache[key]

    # ----------------------------------------------------------------------------------- harmonize

    def harmonize(self, vol, style: Style, *, inversion_steps: int = 30, sampling_steps: int = 10, seed: int = 0,
                  mask=None, readapt_condition: bool = False, progress: ProgressFn | None = None,
                  t_end: int | None = None, z0_clip: float | None = None) -> np.ndarray:
        """Harmonize one ``(D, H, W)`` float32 volume in [0, 1]; returns a float32 array of the same shape.

        Args:
            style: from :meth:`style_from_site` or :meth:`style_from_volume`.
            inversion_steps / sampling_steps: UNet calls of DDIM inversion and of DDIM sampling.
            seed: seeds torch's generators during the call, without disturbing the caller's (the path itself,
                posterior mean and DDIM with eta = 0, draws no random numbers).
            mask: optional ``(D, H, W)`` brain mask; the output is zero outside it.
            readapt_condition: before every UNet call replace the condition by ``AdaIN(condition, z)``.
            progress: ``progress(stage, done, total)`` with stage ``"inversion"`` or ``"sampling"``.
            t_end: last timestep of the inversion and first of the sampling (default: the last training
                timestep, abar = 1.4e-4, full inversion); smaller values keep more of the source, e.g.
                t_end = 81 stops at abar = 0.86.
            z0_clip: clamp the clean-latent estimate of every DDIM step to ``[-z0_clip, z0_clip]`` (off by
                default: it makes inversion lossy).
        """
        masks = None if mask is None else [mask]
        return self.harmonize_batch([vol], style, inversion_steps=inversion_steps, sampling_steps=sampling_steps,
                                    seed=seed, masks=masks, readapt_condition=readapt_condition, progress=progress,
                                    t_end=t_end, z0_clip=z0_clip)[0]

    def harmonize_batch(self, vols: Sequence, style: Style, *, inversion_steps: int = 30, sampling_steps: int = 10,
                        seed: int = 0, masks: Sequence | None = None, readapt_condition: bool = False,
                        progress: ProgressFn | None = None, t_end: int | None = None,
                        z0_clip: float | None = None) -> list[np.ndarray]:
        """Harmonize several volumes of one grid in one batch (worth it on a GPU); see :meth:`harmonize`."""
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
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self._harmonize_batch(arrays, style, inversion_steps, sampling_steps, masks, readapt_condition,
                                         progress, t_end, z0_clip)

    def _harmonize_batch(self, arrays, style, inversion_steps, sampling_steps, masks, readapt_condition, progress,
                         t_end, z0_clip) -> list[np.ndarray]:
        timings = {}

        t0 = time.perf_counter()
        z = self.encode(self._to_device(arrays))
        self._sync()
        timings["encode"] = time.perf_counter() - t0

        with torch.inference_mode():
            z = adain(z, (style.channel_mean, style.channel_std))
            cond = style.latent.to(self.device).expand(z.shape[0], -1, -1, -1, -1).contiguous(
                memory_format=self.memory_format)

            def eps_model(zt: torch.Tensor, t: int) -> torch.Tensor:
                c = adain(cond, zt) if readapt_condition else cond
                with self._autocast():
                    eps = self.unet(zt.contiguous(memory_format=self.memory_format), t, c)
                return eps.float()

            def report(stage, total):
                return None if progress is None else (lambda i: progress(stage, i + 1, total))

            t0 = time.perf_counter()
            z = self.schedule.invert(z, eps_model, inversion_steps, t_end, callback=report("inversion", inversion_steps),
                                     clip=z0_clip)
            self._sync()
            timings["inversion"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            z = self.schedule.sample(z, eps_model, sampling_steps, t_end, callback=report("sampling", sampling_steps),
                                     clip=z0_clip)
            self._sync()
            timings["sampling"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            out = self.decode(z).clamp_(0.0, 1.0)[:, 0].cpu().numpy()
            timings["decode"] = time.perf_counter() - t0
        self.last_timings = timings
        results = []
        for i, arr in enumerate(out):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            if masks is not None and masks[i] is not None:
                arr[masks[i] <= 0] = 0.0
            results.append(arr)
        return results
