"""The settings of one run, built once from the command line and saved as TOML.

:func:`hcld_bids.cli.run.build_config` fills a :class:`Config` from the parsed arguments; every later step
receives that object (or reads it back with :meth:`Config.from_toml`) and never parses arguments again.
Each run saves it as ``config-<run_uuid>.toml`` in the work directory and in ``OUTPUT_DIR/logs``.

Sections (attributes of :class:`Config`):

``execution``  paths, analysis level, participant/session selection, BIDS options, run identity
``nipype``     processes, threads, memory and nipype plugin
``workflow``   harmonization target, sites, model, device, output spaces, DDIM steps, seed
``training``   hyper-parameters of the ``train`` level

TOML has no null: fields whose value is ``None`` are left out of the file and come back as ``None``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import tomli_w

from ._version import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: File of a model bundle directory that marks it as one (written by the ``train`` level).
MODEL_MANIFEST_NAME = "manifest.json"
#: Where the ``train`` level writes its bundle, relative to OUTPUT_DIR.
TRAINED_MODEL_SUBDIR = Path("models") / "hcld"
#: The demo model shipped inside the package.
DEMO_MODEL_DIR = Path(__file__).parent / "data" / "models" / "demo"

ANALYSIS_LEVELS = ("train", "participant", "group")
DEFAULT_SITE_COLUMN = "site"


def new_run_uuid(now: datetime | None = None) -> str:
    """A sortable unique run identifier, ``YYYYmmdd-HHMMSS_<uuid4>`` (UTC)."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}_{uuid.uuid4()}"


@dataclass
class ExecutionConfig:
    """Where data are, which part of them to process, and the identity of this run."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    #: Parsed --bids-filter-file; saved as a JSON string because filters may hold ``null``.
    bids_filters: dict = field(default_factory=dict, metadata={"json": True})
    bids_filter_file: Path | None = None
    bids_database_dir: Path | None = None
    skip_bids_validation: bool = False
    boilerplate_only: bool = False
    reports_only: bool = False
    verbosity: int = 0
    run_uuid: str = field(default_factory=new_run_uuid)
    version: str = __version__

    @property
    def log_dir(self) -> Path:
        """``OUTPUT_DIR/logs``: configs, crash files, validator reports, citation boilerplate."""
        return self.output_dir / "logs"

    @property
    def log_file(self) -> Path:
        """``OUTPUT_DIR/logs/run-<run_uuid>.log``: everything the run logged, nipype's messages included."""
        return self.log_dir / f"run-{self.run_uuid}.log"


@dataclass
class NipypeConfig:
    """Resources nipype may use."""

    nprocs: int = 1
    omp_nthreads: int = 1
    #: Memory limit in GB; ``None``: no limit given.
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    #: Saved as a JSON string (plugin files may hold values TOML cannot).
    plugin_args: dict = field(default_factory=dict, metadata={"json": True})
    use_plugin: Path | None = None
    stop_on_first_crash: bool = False


@dataclass
class WorkflowConfig:
    """What the participant level computes."""

    #: Model bundle directory.
    model: Path = DEMO_MODEL_DIR
    #: How ``model`` was chosen: ``"argument"`` (--model), ``"trained"`` (OUTPUT_DIR/models/hcld),
    #: ``"demo"`` (bundled demo model) or ``"train-output"`` (where the train level writes).
    model_source: str = "demo"
    target_site: str | None = None
    reference_image: Path | None = None
    #: Column of participants.tsv / sessions.tsv holding the site; ``None``: "site", and absence is fine.
    site_column: str | None = None
    device: str = "auto"
    #: Extra output spaces; the model's template space is always written. ``"T1w"``: native space too.
    output_spaces: list[str] = field(default_factory=list)
    #: DDIM steps and strength of the diffusion; ``None``: the model bundle's own inference settings.
    ddim_inversion_steps: int | None = None
    ddim_sampling_steps: int | None = None
    harmonization_strength: float | None = None
    random_seed: int = 0
    #: Testing only: low-quality, fast preprocessing (fewer N4 iterations, a coarse affine registration).
    sloppy: bool = False

    @property
    def native_output(self) -> bool:
        """Whether the harmonized image is also resampled back to the T1w (native) space."""
        return "T1w" in self.output_spaces


@dataclass
class TrainingConfig:
    """Hyper-parameters of the ``train`` level (defaults from method.md)."""

    ae_epochs: int = 30
    ldm_epochs: int = 80
    #: ``None``: 2 for the autoencoder, 1 for the cLDM (with ``grad_accum``).
    batch_size: int | None = None
    grad_accum: int = 4
    lr_ae: float = 1e-4
    lr_disc_ae: float = 5e-4
    lr_ldm: float = 1e-4
    lr_disc_ldm: float = 1e-5
    adv_burn_in_epochs: int = 5
    #: Edge of the cubic random patches of stage 1; ``None``: whole volumes.
    patch_size: int | None = None
    checkpoint_every: int = 100
    resume: bool = True
    weight_content: float = 10.0
    weight_style: float = 10.0
    weight_adversarial: float = 1.0
    weight_gradient: float = 1e4
    weight_noise: float = 1.0
    ae_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    latent_channels: int = 6
    ae_steps: int | None = None
    ldm_steps: int | None = None
    prototype_condition_prob: float = 0.0
    template_resolution: int = 2
    add_site_prototypes: bool = False


_SECTIONS = {
    "execution": ExecutionConfig,
    "nipype": NipypeConfig,
    "workflow": WorkflowConfig,
    "training": TrainingConfig,
}


def _is_path_type(hint) -> bool:
    return hint is Path or Path in typing.get_args(hint)


def _encode_section(section) -> dict:
    out = {}
    for fld in dataclasses.fields(section):
        value = getattr(section, fld.name)
        if value is None:
            continue
        if fld.metadata.get("json"):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[fld.name] = value
    return out


def _decode_section(cls, data: dict):
    hints = typing.get_type_hints(cls)
    known = {fld.name: fld for fld in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        if known[name].metadata.get("json"):
            value = json.loads(value)
        elif _is_path_type(hints[name]):
            value = Path(value)
        kwargs[name] = value
    # Optional fields left out of the file (None) must come back as None, not as their default.
    for name, fld in known.items():
        if name not in kwargs and type(None) in typing.get_args(hints[name]):
            kwargs[name] = None
    return cls(**kwargs)


@dataclass
class Config:
    """All settings of one run."""

    execution: ExecutionConfig
    nipype: NipypeConfig = field(default_factory=NipypeConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @property
    def file_name(self) -> str:
        """Name under which this run saves its config: ``config-<run_uuid>.toml``."""
        return f"config-{self.execution.run_uuid}.toml"

    def to_dict(self) -> dict:
        """Plain TOML-ready dictionary: one table per section, ``None`` values left out."""
        return {name: _encode_section(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on unknown sections or settings."""
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(unknown)}")
        if "execution" not in data:
            raise ValueError("config has no [execution] section")
        return cls(**{name: _decode_section(_SECTIONS[name], data.get(name, {})) for name in _SECTIONS})

    def to_toml(self, path: str | os.PathLike) -> Path:
        """Write the config to ``path`` atomically (temporary file, then rename) and return the path."""
        from .bids.atomic import atomic_write_text

        return atomic_write_text(path, tomli_w.dumps(self.to_dict()))

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> Config:
        """Read a config written by :meth:`to_toml`."""
        with open(path, "rb") as stream:
            return cls.from_dict(tomllib.load(stream))

    def save(self) -> list[Path]:
        """Save into the work directory and ``OUTPUT_DIR/logs`` under :attr:`file_name`."""
        return [
            self.to_toml(self.execution.work_dir / self.file_name),
            self.to_toml(self.execution.log_dir / self.file_name),
        ]


def resolve_model(model: str | os.PathLike | None, output_dir: Path, analysis_level: str,
                  add_prototypes: bool = False) -> tuple[Path, str]:
    """Choose the model bundle directory; return it and how it was chosen.

    - ``--model`` given: that directory, ``"argument"``.
    - ``train`` level without ``--model``: ``OUTPUT_DIR/models/hcld`` (where it will write),
      ``"train-output"`` (with ``--add-site-prototypes``: the model to add them to, chosen as below).
    - otherwise ``OUTPUT_DIR/models/hcld`` when it holds a bundle manifest (a previous ``train`` run),
      ``"trained"``; else the demo model shipped in the package, ``"demo"``.
    """
    if model is not None:
        return Path(model).absolute(), "argument"
    trained = output_dir / TRAINED_MODEL_SUBDIR
    if analysis_level == "train" and not add_prototypes:
        return trained, "train-output"
    if (trained / MODEL_MANIFEST_NAME).is_file():
        return trained, "trained"
    return DEMO_MODEL_DIR, "demo"
