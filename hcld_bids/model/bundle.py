"""The model bundle: a directory with a JSON manifest, safetensors weights and site style prototypes.

Layout::

    manifest.json              format_version, architectures, noise schedule, scale factor, preprocessing,
                               sites, versions, sha256 of every weight file, training and metrics blocks
    autoencoder.safetensors
    unet.safetensors
    prototypes.safetensors     <key>.latent (1, C, d, h, w), <key>.channel_mean (C,), <key>.channel_std (C,)
    restoration.safetensors    optional: the restoration prior (hcld_bids.model.restore), manifest block
                               ``restoration`` (config, weights, training record)

Loading reads JSON and safetensors only (nothing is unpickled), checks each weight file against the sha256
in the manifest and refuses a manifest of a newer format. Writing goes to a temporary sibling directory
that is renamed into place, so a killed process never leaves a half-written bundle under its final name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .autoencoder import AutoencoderKL
from .ddim import NoiseSchedule
from .errors import BundleError, BundleIntegrityError, BundleNotFoundError, BundleVersionError
from .prototypes import SitePrototype, compute_site_prototype
from .restore import RestorationNet
from .unet import DiffusionUNet

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
AE_FILE = "autoencoder.safetensors"
UNET_FILE = "unet.safetensors"
RESTORE_FILE = "restoration.safetensors"
PROTO_FILE = "prototypes.safetensors"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def bundle_digest(weights_sha256: dict[str, str]) -> str:
    """One sha256 identifying all weight files of a bundle (order-independent)."""
    text = "\n".join(f"{name} {digest}" for name, digest in sorted(weights_sha256.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ModelBundle:
    """A loaded bundle. ``prototypes`` maps site -> ``(1, C, d, h, w)`` style latent; ``prototype_stats``
    maps site -> ``{"channel_mean": (C,), "channel_std": (C,), "count": int}``."""

    path: Path
    manifest: dict
    autoencoder: AutoencoderKL
    unet: DiffusionUNet
    schedule: NoiseSchedule
    scale_factor: float
    prototypes: dict[str, torch.Tensor] = field(default_factory=dict)
    prototype_stats: dict[str, dict] = field(default_factory=dict)
    weights_sha256: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    #: the restoration prior, when the bundle has one (manifest block ``restoration``)
    restoration: RestorationNet | None = None

    @property
    def scheduler(self) -> NoiseSchedule:
        return self.schedule

    @property
    def preprocessing(self) -> dict:
        return dict(self.manifest.get("preprocessing") or {})

    @property
    def sites(self) -> list[str]:
        return sorted(self.prototypes)

    def prototype(self, site: str) -> SitePrototype:
        stats = self.prototype_stats[site]
        return SitePrototype(self.prototypes[site], stats["channel_mean"], stats["channel_std"], stats["count"])

    def check_preprocessing(self, expected: dict) -> None:
        """Raise :class:`BundleError` unless every key of ``expected`` equals the manifest's preprocessing."""
        have = self.preprocessing
        for key, value in expected.items():
            if key in have and _jsonable(have[key]) != _jsonable(value):
                raise BundleError(f"{self.path / MANIFEST}: preprocessing {key!r} is {have[key]!r} but the input "
                                  f"was prepared with {value!r}; preprocess with the bundle's settings or use "
                                  f"a bundle trained for them")


def _jsonable(value):
    return json.loads(json.dumps(value))


def _versions() -> dict:
    from .. import __version__
    import numpy
    import safetensors

    return {"hcld_bids": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__}


def _state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}


def _write_tree(tmp: Path, autoencoder, unet, prototypes: dict[str, SitePrototype], manifest: dict,
                restoration: RestorationNet | None = None) -> None:
    tmp.mkdir(parents=True)
    save_file(_state_dict_cpu(autoencoder), str(tmp / AE_FILE))
    save_file(_state_dict_cpu(unet), str(tmp / UNET_FILE))
    files = [AE_FILE, UNET_FILE, PROTO_FILE]
    if restoration is not None:
        save_file(_state_dict_cpu(restoration), str(tmp / RESTORE_FILE))
        files.append(RESTORE_FILE)
    tensors = {}
    sites = manifest.setdefault("sites", {})
    for i, (site, proto) in enumerate(sorted(prototypes.items())):
        key = f"site{i:03d}"
        tensors[f"{key}.latent"] = proto.latent.detach().float().cpu().contiguous()
        tensors[f"{key}.channel_mean"] = proto.channel_mean.detach().float().cpu().flatten().contiguous()
        tensors[f"{key}.channel_std"] = proto.channel_std.detach().float().cpu().flatten().contiguous()
        entry = sites.setdefault(site, {})
        entry["prototype"] = {"key": key, "n_images": int(proto.count)}
    save_file(tensors, str(tmp / PROTO_FILE))
    manifest["weights"] = {name: file_sha256(tmp / name) for name in files}
    manifest["sha256"] = bundle_digest(manifest["weights"])
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    if path.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"{path}: a model bundle already exists there; choose another directory or "
                              f"allow overwriting")
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def save_bundle(path, autoencoder: AutoencoderKL, unet: DiffusionUNet, scale_factor: float,
                prototypes: dict[str, SitePrototype] | None = None, manifest_extra: dict | None = None, *,
                schedule: NoiseSchedule | None = None, overwrite: bool = False,
                restoration: RestorationNet | None = None, restoration_training: dict | None = None) -> Path:
    """Write a bundle directory atomically and return its path.

    ``manifest_extra`` is merged into the manifest; its usual keys are ``name``, ``preprocessing`` (template,
    resolution, grid shape, crop start, intensity scaling: opaque to the model core), ``sites`` (site ->
    ``{"n_images": ...}``), ``training`` and ``metrics``. ``restoration`` (optional) is the restoration prior,
    ``restoration_training`` its training record (manifest ``restoration.training``).
    """
    path = Path(path)
    schedule = schedule or NoiseSchedule()
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "hcld-bids-model",
        "name": path.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "autoencoder": {"class": "AutoencoderKL", "config": autoencoder.config, "weights": AE_FILE},
        "unet": {"class": "DiffusionUNet", "config": unet.config, "weights": UNET_FILE},
        "noise_schedule": schedule.config,
        "scale_factor": float(scale_factor),
        "prototypes": {"weights": PROTO_FILE},
        "preprocessing": {},
        "sites": {},
        "versions": _versions(),
        "training": {},
        "metrics": {},
    }
    for key, value in _jsonable(manifest_extra or {}).items():
        if key == "sites":
            for site, entry in value.items():
                manifest["sites"].setdefault(site, {}).update(entry)
        elif key in ("format_version", "weights", "sha256", "restoration"):
            raise ValueError(f"manifest key {key!r} is written by save_bundle itself")
        else:
            manifest[key] = value
    if restoration is not None:
        manifest["restoration"] = {"class": "RestorationNet", "config": restoration.config, "weights": RESTORE_FILE,
                                   "training": _jsonable(restoration_training or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _write_tree(tmp, autoencoder, unet, prototypes or {}, manifest, restoration)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, path, overwrite)
    return path


def read_manifest(path) -> dict:
    """Parse and validate ``manifest.json`` of a bundle directory (no weights are read)."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleNotFoundError(f"{path}: model bundle directory not found; pass --model with a bundle "
                                  f"directory (one with {MANIFEST})")
    if not mpath.is_file():
        raise BundleNotFoundError(f"{mpath}: bundle manifest not found; the directory is not a model bundle")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc}); restore the bundle from its source") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: the manifest must be a JSON object; restore the bundle from its source")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{mpath}: format_version is missing or not an integer; restore the bundle")
    if version > FORMAT_VERSION:
        raise BundleVersionError(f"{mpath}: bundle format {version} is newer than this hcld-bids reads "
                                 f"({FORMAT_VERSION}); upgrade hcld-bids")
    for key in ("autoencoder", "unet", "scale_factor", "weights"):
        if key not in manifest:
            raise BundleError(f"{mpath}: required key {key!r} is missing; restore the bundle from its source")
    return manifest


def _load_weights(path: Path, name: str, expected_sha: str) -> dict[str, torch.Tensor]:
    fpath = path / name
    if not fpath.is_file():
        raise BundleNotFoundError(f"{fpath}: weight file listed in the manifest is missing; restore the bundle")
    digest = file_sha256(fpath)
    if digest != expected_sha:
        raise BundleIntegrityError(f"{fpath}: sha256 {digest[:16]}... does not match the manifest "
                                   f"({str(expected_sha)[:16]}...); the file was modified or corrupted, restore "
                                   f"the bundle from its source")
    try:
        return load_file(str(fpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{fpath}: not a readable safetensors file ({exc}); restore the bundle") from None


def _build(cls, section: dict, state: dict, mpath: Path, what: str):
    try:
        model = cls.from_config(section["config"])
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{mpath}: the {what} weights do not fit its configuration ({first}); "
                          f"restore the bundle from its source") from None
    return model.eval().requires_grad_(False)


def _check_sections(manifest: dict, mpath: Path) -> None:
    """The manifest's blocks have the types the loader and the harmonizer read (a hand-edited or damaged
    manifest gets one line naming the block, not an error deep in the harmonizer or its report)."""
    weights = manifest["weights"]
    if not isinstance(weights, dict) or not all(isinstance(v, str) for v in weights.values()):
        raise BundleError(f"{mpath}: 'weights' must map file names to sha256 strings; restore the bundle")
    for block in ("autoencoder", "unet"):
        if not isinstance(manifest.get(block), dict) or not isinstance(manifest[block].get("config"), dict):
            raise BundleError(f"{mpath}: the '{block}' block must be an object with a 'config' object; restore the "
                              "bundle from its source")
    for block in ("prototypes", "sites", "restoration", "noise_schedule"):
        if manifest.get(block) is not None and not isinstance(manifest[block], dict):
            raise BundleError(f"{mpath}: the '{block}' block must be an object; restore the bundle from its source")
    for site, entry in (manifest.get("sites") or {}).items():
        if not isinstance(entry, dict):
            raise BundleError(f"{mpath}: site {site!r} must be an object; restore the bundle from its source")
        hist = entry.get("intensity_histogram")
        if hist is not None:
            try:
                edges = np.asarray(hist["edges"], dtype=float)
                density = np.asarray(hist["density"], dtype=float)
                ok = (edges.ndim == density.ndim == 1 and density.size >= 2 and edges.size == density.size + 1
                      and np.isfinite(edges).all() and np.isfinite(density).all() and (np.diff(edges) > 0).all())
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise BundleError(f"{mpath}: the intensity histogram of site {site!r} needs increasing 'edges' one "
                                  "longer than its 'density'; restore the bundle from its source")
        spectrum = entry.get("power_spectrum")
        if spectrum is not None:
            try:
                values = np.asarray(spectrum, dtype=float)
                ok = values.ndim == 1 and round(values.size ** (1 / 3)) ** 3 == values.size > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise BundleError(f"{mpath}: the power spectrum of site {site!r} must be a list of n**3 numbers; "
                                  "restore the bundle from its source")


def load_bundle(path, device="cpu") -> ModelBundle:
    """Load and verify a bundle; the networks are returned in eval mode on ``device``."""
    path = Path(path)
    manifest = read_manifest(path)
    mpath = path / MANIFEST
    _check_sections(manifest, mpath)
    weights = manifest["weights"]
    ae_file = manifest["autoencoder"].get("weights", AE_FILE)
    unet_file = manifest["unet"].get("weights", UNET_FILE)
    proto_file = (manifest.get("prototypes") or {}).get("weights", PROTO_FILE)
    for name in (ae_file, unet_file, proto_file):
        if name not in weights:
            raise BundleError(f"{mpath}: no sha256 recorded for {name}; restore the bundle from its source")
        if Path(name).name != name:
            raise BundleError(f"{mpath}: weight file name {name!r} must be a plain file name")
    ae = _build(AutoencoderKL, manifest["autoencoder"], _load_weights(path, ae_file, weights[ae_file]), mpath,
                "autoencoder")
    unet = _build(DiffusionUNet, manifest["unet"], _load_weights(path, unet_file, weights[unet_file]), mpath, "UNet")
    proto_tensors = _load_weights(path, proto_file, weights[proto_file])
    prototypes, stats = {}, {}
    for site, entry in (manifest.get("sites") or {}).items():
        proto = entry.get("prototype") if isinstance(entry, dict) else None
        if not proto:
            continue
        key = proto.get("key")
        try:
            prototypes[site] = proto_tensors[f"{key}.latent"].to(device)
            stats[site] = {"channel_mean": proto_tensors[f"{key}.channel_mean"].to(device),
                           "channel_std": proto_tensors[f"{key}.channel_std"].to(device),
                           "count": int(proto.get("n_images", 0))}
        except KeyError:
            raise BundleError(f"{path / proto_file}: prototype {key!r} of site {site!r} is missing; restore the "
                              f"bundle from its source") from None
    restoration = None
    section = manifest.get("restoration")
    if section is not None:
        name = section.get("weights", RESTORE_FILE) if isinstance(section, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name not in weights:
            raise BundleError(f"{mpath}: the restoration block names no weight file with a recorded sha256; "
                              f"restore the bundle from its source")
        restoration = _build(RestorationNet, section, _load_weights(path, name, weights[name]), mpath,
                             "restoration").to(device)
    try:
        schedule = NoiseSchedule.from_config(manifest.get("noise_schedule") or {})
        scale_factor = float(manifest["scale_factor"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{mpath}: bad noise_schedule or scale_factor ({exc}); restore the bundle") from None
    return ModelBundle(path=path, manifest=manifest, autoencoder=ae.to(device), unet=unet.to(device),
                       schedule=schedule, scale_factor=scale_factor, prototypes=prototypes, prototype_stats=stats,
                       weights_sha256=dict(weights), sha256=bundle_digest(weights), restoration=restoration)


def add_prototypes(bundle_path, site_volumes: dict, device="cpu", overwrite_sites: bool = False,
                   site_info: dict | None = None) -> ModelBundle:
    """Add (or with ``overwrite_sites`` replace) style prototypes of new sites without retraining.

    ``site_volumes`` maps a site label to an iterable of ``(D, H, W)`` volumes on the bundle's grid;
    ``site_info`` optionally maps a site label to extra manifest entries of that site (e.g. its intensity
    histogram). The bundle is rewritten atomically; the returned bundle is the reloaded result.
    """
    bundle = load_bundle(bundle_path, device)
    clash = sorted(set(site_volumes) & set(bundle.prototypes))
    if clash and not overwrite_sites:
        raise BundleError(f"{bundle.path}: sites {clash} already have prototypes; pick new site labels or "
                          f"allow replacing them")
    protos = {site: bundle.prototype(site) for site in bundle.prototypes}
    for site, volumes in site_volumes.items():
        protos[site] = compute_site_prototype(bundle.autoencoder, volumes, bundle.scale_factor, device)
    extra = _manifest_extra(bundle)
    for site, info in (site_info or {}).items():
        extra.setdefault("sites", {}).setdefault(site, {}).update(info)
    return _rewrite(bundle, protos, extra, device, **_restoration_of(bundle))


def _rewrite(bundle: ModelBundle, prototypes: dict, extra: dict, device, **restoration) -> ModelBundle:
    """Write ``bundle`` again in place (same networks and schedule) with ``prototypes`` and ``extra``; reload it."""
    save_bundle(bundle.path, bundle.autoencoder, bundle.unet, bundle.scale_factor, prototypes, extra,
                schedule=bundle.schedule, overwrite=True, **restoration)
    return load_bundle(bundle.path, device)


def _manifest_extra(bundle: ModelBundle) -> dict:
    """The parts of ``bundle``'s manifest that ``save_bundle`` takes as ``manifest_extra`` when rewriting it."""
    return {k: v for k, v in bundle.manifest.items()
            if k not in ("format_version", "weights", "sha256", "autoencoder", "unet", "noise_schedule",
                         "scale_factor", "prototypes", "versions", "created", "kind", "restoration")}


def _restoration_of(bundle: ModelBundle) -> dict:
    """``save_bundle`` keywords that keep ``bundle``'s restoration prior."""
    if bundle.restoration is None:
        return {}
    return {"restoration": bundle.restoration,
            "restoration_training": (bundle.manifest.get("restoration") or {}).get("training")}


def add_restoration(bundle_path, net: RestorationNet, training: dict | None = None, device="cpu") -> ModelBundle:
    """Add (or replace) the restoration prior of a bundle, atomically, without touching its other weights."""
    bundle = load_bundle(bundle_path, device)
    return _rewrite(bundle, {site: bundle.prototype(site) for site in bundle.prototypes}, _manifest_extra(bundle),
                    device, restoration=net, restoration_training=training)
