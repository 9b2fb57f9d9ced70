"""Find what the participant level wrote in OUTPUT_DIR: one record per template-space T1w.

File names follow the output contract (``<prefix>_space-<tpl>[_res-<r>]_desc-{preproc,harmonized}_T1w``,
``..._desc-brain_mask``); the template and resolution are read from the names, never assumed. Partner
files are named with :func:`hcld_bids.bids.derivatives.derivative_path` from the parsed entities, so the
reports find exactly what the sink wrote. Hidden entries (``.tmp-*`` staging files of atomic writes, a
killed run's leftovers) are never read as outputs; they are reported as strays.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..bids.atomic import TMP_PREFIX
from ..bids.derivatives import derivative_path

LOGGER = logging.getLogger("hcld_bids.reports")

#: Problems a record may have (shown in reports and the group table).
MISSING_HARMONIZED = "missing-harmonized"
MISSING_PREPROC = "missing-preproc"
MISSING_MASK = "missing-mask"
MISSING_SIDECAR = "missing-sidecar"
MISSING_QC = "missing-qc"

_ENTITY_ORDER = ("subject", "session", "acquisition", "reconstruction", "run")


@dataclass
class ImageRecord:
    """The files of one template-space T1w: ``entities`` identify it (no desc/suffix/extension)."""

    entities: dict
    harmonized: Path | None = None
    preproc: Path | None = None
    mask: Path | None = None
    sidecar: dict | None = None
    problems: list[str] = field(default_factory=list)
    #: a sidecar found without any of the images (a run killed between writing the two)
    orphan_sidecar: Path | None = None

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def prefix(self) -> str:
        """``sub-<l>[_ses-<l>][_acq-<l>][_rec-<l>][_run-<n>]``: the source T1w's entities."""
        keys = {"subject": "sub", "session": "ses", "acquisition": "acq", "reconstruction": "rec", "run": "run"}
        return "_".join(f"{keys[k]}-{self.entities[k]}" for k in _ENTITY_ORDER if self.entities.get(k) is not None)

    @property
    def complete(self) -> bool:
        """Harmonized, preprocessed and mask images all present."""
        return self.harmonized is not None and self.preproc is not None and self.mask is not None

    @property
    def hcld(self) -> dict:
        hcld = (self.sidecar or {}).get("HCLD")
        return dict(hcld) if isinstance(hcld, dict) else {}

    @property
    def at_target(self) -> bool:
        """The image was already at the target site (``HCLD.SourceIsTarget``; older sidecars: source site equal
        to target site)."""
        hcld = self.hcld
        if "SourceIsTarget" in hcld:
            return bool(hcld["SourceIsTarget"])
        return bool(hcld.get("TargetSite")) and hcld.get("SourceSite") == hcld.get("TargetSite")

    @property
    def demo(self) -> bool:
        """Harmonized with the demo model shipped with hcld-bids (``HCLD.DemoModel``)."""
        return bool(self.hcld.get("DemoModel"))

    @property
    def qc(self) -> dict | None:
        qc = (self.sidecar or {}).get("QC")
        return dict(qc) if isinstance(qc, dict) else None

    def relative(self, output_dir: Path, path: Path | None = None) -> str:
        """Path of ``path`` (default: the harmonized image, else the preprocessed one) from OUTPUT_DIR."""
        path = path or self.harmonized or self.preproc or self.mask or self.orphan_sidecar
        return Path(path).relative_to(output_dir).as_posix()


@lru_cache(maxsize=1)
def _entity_patterns() -> tuple:
    """pybids' entities of its "bids" and "derivatives" configurations, loaded once: pybids loads them anew
    for every parsed name otherwise (0.13 s each, most of the time the reports spent finding files)."""
    from bids.layout.models import Config

    entities = {}
    for name in ("bids", "derivatives"):
        entities.update(Config.load(name).entities)
    return tuple(entities.values())


def _parse(path: Path) -> dict:
    from bids.layout import parse_file_entities

    # the leading "/" lets pybids' patterns see where the name starts (they anchor sub- after a slash);
    # the name alone is parsed so that directories above OUTPUT_DIR cannot leak entities in
    entities = parse_file_entities("/" + path.name, entities=_entity_patterns())
    if "res" in entities:  # parsed name of the entity differs from the one of the path patterns
        entities["resolution"] = entities.pop("res")
    return entities


def _partner(output_dir: Path, entities: dict, desc: str, suffix: str) -> Path:
    return derivative_path(dict(entities, desc=desc, suffix=suffix, extension=".nii.gz"), output_dir)


def _anat_dirs(output_dir: Path, subject: str | None):
    pattern = f"sub-{subject}" if subject else "sub-*"
    for subject_dir in sorted(output_dir.glob(pattern)):
        if not subject_dir.is_dir():
            continue
        yield from (d for d in [subject_dir / "anat"] if d.is_dir())
        yield from (d / "anat" for d in sorted(subject_dir.glob("ses-*")) if (d / "anat").is_dir())


def find_strays(output_dir: str | os.PathLike, subject: str | None = None) -> list[Path]:
    """Hidden temporary entries (``.tmp-*``) left under the subject directories by interrupted writes."""
    output_dir = Path(output_dir)
    pattern = f"sub-{subject}" if subject else "sub-*"
    strays = []
    for subject_dir in sorted(output_dir.glob(pattern)):
        for root, dirs, files in os.walk(subject_dir):
            for name in [*dirs, *files]:
                if name.startswith(TMP_PREFIX):
                    strays.append(Path(root) / name)
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(strays)


def _record_key(path: Path):
    """(desc, record key, source entities) of a template-space harmonized/preproc file; None for other files."""
    entities = _parse(path)
    desc = entities.pop("desc", None)
    if desc not in ("harmonized", "preproc") or "space" not in entities:
        return None
    for key in ("suffix", "extension", "datatype"):
        entities.pop(key, None)
    return desc, tuple(sorted((k, str(v)) for k, v in entities.items())), entities


def find_images(output_dir: str | os.PathLike, subject: str | None = None) -> list[ImageRecord]:
    """Records of every template-space T1w under OUTPUT_DIR (or of one ``subject`` label), sorted.

    A record exists when a harmonized or a preprocessed template-space image, or only its JSON sidecar,
    exists; missing partners and an unreadable or incomplete sidecar are listed in ``problems``.
    """
    output_dir = Path(output_dir)
    records: dict[tuple, ImageRecord] = {}
    for anat in _anat_dirs(output_dir, subject):
        for path in sorted(anat.glob("sub-*_space-*_desc-*_T1w.nii.gz")):
            parsed = _record_key(path)
            if parsed:
                desc, key, entities = parsed
                setattr(records.setdefault(key, ImageRecord(entities=entities)), desc, path)
        # sidecars whose images are all missing: listed as incomplete rather than silently skipped
        for path in sorted(anat.glob("sub-*_space-*_desc-*_T1w.json")):
            parsed = _record_key(path)
            if parsed and parsed[1] not in records:
                records[parsed[1]] = ImageRecord(entities=parsed[2], orphan_sidecar=path)
    for record in records.values():
        if record.harmonized is None:
            harmonized = _partner(output_dir, record.entities, "harmonized", "T1w")
            record.harmonized = harmonized if harmonized.is_file() else None
        if record.preproc is None:
            preproc = _partner(output_dir, record.entities, "preproc", "T1w")
            record.preproc = preproc if preproc.is_file() else None
        mask = _partner(output_dir, record.entities, "brain", "mask")
        record.mask = mask if mask.is_file() else None
        if record.harmonized is None:
            record.problems.append(MISSING_HARMONIZED)
        if record.preproc is None:
            record.problems.append(MISSING_PREPROC)
        if record.mask is None:
            record.problems.append(MISSING_MASK)
        if record.harmonized is not None:
            sidecar_path = record.harmonized.with_name(record.harmonized.name.replace(".nii.gz", ".json"))
            try:
                sidecar = json.loads(sidecar_path.read_text())
                if not isinstance(sidecar, dict):
                    raise ValueError(f"a JSON {type(sidecar).__name__}, not an object")
            except (OSError, ValueError) as err:
                record.problems.append(MISSING_SIDECAR)
                reason = ("missing" if isinstance(err, FileNotFoundError)
                          else f"unreadable: {' '.join(str(err).split())}")
                LOGGER.warning("%s: %s (the file is %s); run the participant level again for this image to "
                               "rewrite it", record.relative(output_dir, sidecar_path), MISSING_SIDECAR, reason[:200])
            else:
                record.sidecar = sidecar
                if record.qc is None:
                    record.problems.append(MISSING_QC)
        for problem in record.problems:
            if problem != MISSING_SIDECAR:  # said above, with the file and the reason
                LOGGER.warning("%s: %s", record.relative(output_dir), problem)
    return sorted(records.values(), key=lambda r: tuple(str(r.entities.get(k) or "") for k in _ENTITY_ORDER))
