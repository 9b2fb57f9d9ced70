"""The output derivatives dataset: its description, file names, and BIDS URIs.

OUTPUT_DIR is the root of a BIDS-Derivatives dataset. This module writes its ``dataset_description.json``
and builds file names of derivatives from entities with pybids' ``build_path`` and the path patterns of
niworkflows (the same patterns :class:`hcld_bids.bids.sink.DerivativesDataSink` uses), so that readers
(group level, tests) find exactly what the participant level wrote. Nothing here imports nipype.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from .. import CODE_URL
from .._version import __version__
from .atomic import atomic_write_json, atomic_write_text

LOGGER = logging.getLogger("hcld_bids.bids")

#: BIDS version the derivatives dataset declares.
BIDS_VERSION = "1.10.0"
#: Name of the input dataset in BIDS URIs and DatasetLinks (``bids:raw:sub-01/anat/...``).
RAW_DATASET_NAME = "raw"
#: Environment variables naming the container the app runs in (set in the container image).
CONTAINER_TYPE_ENV = "HCLD_CONTAINER_TYPE"
CONTAINER_TAG_ENV = "HCLD_CONTAINER_TAG"
CONTAINER_URI_ENV = "HCLD_CONTAINER_URI"
#: Outputs that are not BIDS files (reports, logs, model bundles, group tables), hidden from the
#: validator by OUTPUT_DIR/.bidsignore. Directory patterns without a trailing slash: bids-validator-deno
#: only ignores a directory itself that way.
BIDSIGNORE_PATTERNS = ("logs", "models", "sub-*/figures", "sub-*/log", "*.html", "group_*",
                       "*_xfm.*")  # transforms: not in the BIDS specification yet (as fMRIPrep)
README_TEXT = """\
hcld-bids derivatives
=====================

T1-weighted images harmonized across scanners and sites with 3D conditional latent diffusion (HCLD),
written by hcld-bids (see dataset_description.json for the version and the input dataset).

- sub-<label>/[ses-<label>/]anat/: preprocessed, brain mask, harmonized images, transforms; each JSON
  sidecar lists its Sources (BIDS URIs) and, for harmonized images, the provenance of the harmonization.
- sub-<label>.html, sub-<label>/figures/: participant reports.
- group_T1w.tsv, group_report.html: group quality control.
- logs/: the configuration of every run, methods boilerplate (CITATION.*), crash files.
- models/: model bundles written by the train level.
"""


def container_info(environ: Mapping[str, str] | None = None) -> dict | None:
    """The ``Container`` object of GeneratedBy, from the environment; ``None`` outside a container.

    ``HCLD_CONTAINER_TYPE``/``_TAG``/``_URI`` are baked into the image. Apptainer/Singularity run Docker
    images with the Docker image's environment, so their own variables decide the type when present.
    """
    environ = os.environ if environ is None else environ
    ctype = environ.get(CONTAINER_TYPE_ENV)
    if not ctype:
        return None
    if environ.get("APPTAINER_CONTAINER"):
        ctype = "apptainer"
    elif environ.get("SINGULARITY_CONTAINER"):
        ctype = "singularity"
    info = {"Type": ctype}
    if environ.get(CONTAINER_TAG_ENV):
        info["Tag"] = environ[CONTAINER_TAG_ENV]
    if environ.get(CONTAINER_URI_ENV):
        info["URI"] = environ[CONTAINER_URI_ENV]
    return info


def dataset_description(bids_dir: str | os.PathLike, container: Mapping | None = None) -> dict:
    """Content of the derivatives ``dataset_description.json`` for input ``bids_dir``.

    ``container``: the ``Container`` object (``Type``, ``Tag``, ``URI``); ``None`` reads it from the
    environment (:func:`container_info`).
    """
    bids_dir = Path(bids_dir).absolute()
    raw = {}
    try:
        raw = json.loads((bids_dir / "dataset_description.json").read_text())
    except (OSError, ValueError):
        pass
    generated_by = {"Name": "hcld-bids", "Version": __version__, "CodeURL": CODE_URL}
    container = container_info() if container is None else dict(container)
    if container:
        generated_by["Container"] = container
    source = {"URL": bids_dir.as_uri()}
    if raw.get("DatasetDOI"):
        source["DOI"] = raw["DatasetDOI"]
    description = {
        "Name": f"hcld-bids: harmonized T1w images of {raw.get('Name', bids_dir.name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
        "DatasetLinks": {RAW_DATASET_NAME: bids_dir.as_uri()},
        "HowToAcknowledge": "Cite hcld-bids and the HCLD method; see logs/CITATION.md for the methods text.",
    }
    if raw.get("License"):
        description["License"] = raw["License"]
    return description


def write_dataset_description(
    output_dir: str | os.PathLike, bids_dir: str | os.PathLike, container: Mapping | None = None
) -> Path:
    """Write ``OUTPUT_DIR/dataset_description.json`` (atomically; untouched if already identical).

    Safe when several participant jobs call it at once: each writes a complete file under a temporary
    name and renames it. Returns the path.
    """
    path = Path(output_dir) / "dataset_description.json"
    content = dataset_description(bids_dir, container)
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = None
    if current == content:
        return path
    if current is not None:
        LOGGER.info("Updating %s (it described another run or version)", path)
    return atomic_write_json(path, content)


def write_bidsignore(output_dir: str | os.PathLike) -> Path:
    """Make sure ``OUTPUT_DIR/.bidsignore`` holds :data:`BIDSIGNORE_PATTERNS` (other lines are kept)."""
    path = Path(output_dir) / ".bidsignore"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    missing = [pattern for pattern in BIDSIGNORE_PATTERNS if pattern not in lines]
    if missing:
        atomic_write_text(path, "\n".join(lines + missing) + "\n")
    return path


def init_derivatives_dataset(
    output_dir: str | os.PathLike, bids_dir: str | os.PathLike, container: Mapping | None = None
) -> Path:
    """Write the dataset-level files of OUTPUT_DIR: dataset_description.json, .bidsignore, and a README
    when there is none. Idempotent and safe to call from concurrent jobs. Returns OUTPUT_DIR."""
    output_dir = Path(output_dir)
    write_dataset_description(output_dir, bids_dir, container)
    write_bidsignore(output_dir)
    if not (output_dir / "README").exists():
        atomic_write_text(output_dir / "README", README_TEXT)
    return output_dir


def bids_uri(
    path: str | os.PathLike, bids_dir: str | os.PathLike | None, output_dir: str | os.PathLike | None = None
) -> str:
    """BIDS URI of a file: ``bids:raw:<relpath>`` inside BIDS_DIR, ``bids::<relpath>`` inside OUTPUT_DIR.

    A string that is already a BIDS URI is returned as is; a path in neither dataset is a ``ValueError``.
    """
    if isinstance(path, str) and path.startswith("bids:"):
        return path
    path = Path(path).absolute()
    roots = [(Path(bids_dir).absolute(), RAW_DATASET_NAME)] if bids_dir is not None else []
    if output_dir is not None:
        roots.insert(0, (Path(output_dir).absolute(), ""))  # the derivatives dataset itself
    for root, name in roots:
        if path.is_relative_to(root):
            return f"bids:{name}:{path.relative_to(root).as_posix()}"
    # the same directories reached through symbolic links (e.g. BIDS_DIR given as a link; pybids resolves it)
    real = Path(os.path.realpath(path))
    for root, name in roots:
        real_root = Path(os.path.realpath(root))
        if real.is_relative_to(real_root):
            return f"bids:{name}:{real.relative_to(real_root).as_posix()}"
    raise ValueError(f"{path} is neither in BIDS_DIR nor in OUTPUT_DIR; no BIDS URI for it")


@lru_cache(maxsize=1)
def derivative_patterns() -> tuple[str, ...]:
    """The path patterns of niworkflows' ``nipreps.json`` (those of its DerivativesDataSink)."""
    from niworkflows import data

    return tuple(json.loads(data.load.readable("nipreps.json").read_text())["default_path_patterns"])


def derivative_path(entities: Mapping, output_dir: str | os.PathLike | None = None) -> Path:
    """Path of a derivative with ``entities`` (``subject``, ``session``, ``space``, ``desc``, ``suffix``,
    ``extension``, ...), relative to OUTPUT_DIR unless ``output_dir`` is given.

    ``datatype`` defaults to ``anat``; ``extension`` needs its dot (``.nii.gz``). Raises ``ValueError``
    when no pattern fits the entities.
    """
    from bids.layout.writing import build_path

    entities = {key: value for key, value in entities.items() if value is not None}
    entities.setdefault("datatype", "anat")
    built = build_path(entities, path_patterns=list(derivative_patterns()), strict=True)
    if not built:
        raise ValueError(f"no derivative file-name pattern fits the entities {dict(entities)}")
    return Path(output_dir) / built if output_dir is not None else Path(built)
