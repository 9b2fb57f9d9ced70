"""TemplateFlow templates: which files a model needs, whether they are on disk, offline copies.

Compute nodes often have no internet. TemplateFlow downloads a file the first time it is asked
for, and an interrupted or impossible download leaves an empty placeholder behind (its
``TEMPLATEFLOW_HOME`` skeleton is made of such placeholders). :func:`check_templates` therefore
looks at the files themselves, at the very paths TemplateFlow would return, before any workflow
starts, and never triggers a download.

When TemplateFlow cannot give a file (no network, placeholders) and the package ships a copy of it
(:data:`_OFFLINE_DIR`: MNI152NLin6Asym at 2 mm, what the bundled model needs), :func:`check_templates`
returns the shipped copy and says so once, in one warning line. TemplateFlow's files win whenever they are
there.

TemplateFlow reads ``TEMPLATEFLOW_HOME`` once, when it is first imported; this module imports it
lazily, so a program can set the variable before calling anything here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .bids.atomic import atomic_copy, atomic_write_bytes
from .errors import MissingInputError

#: (suffix, desc) of every template file the preprocessing reads.
REQUIRED_FILES = (("T1w", None), ("mask", "brain"))

#: Offline copies shipped in the package, laid out like a TEMPLATEFLOW_HOME.
_OFFLINE_DIR = Path(__file__).parent / "data" / "templateflow"

_GZIP_MAGIC = b"\x1f\x8b"

LOGGER = logging.getLogger("hcld_bids")
#: (template, resolution) whose shipped copy this process already announced.
_ANNOUNCED: set = set()


def template_filename(template: str, resolution: int, suffix: str, desc: str | None = None) -> str:
    """TemplateFlow's name for a template file, e.g. ``tpl-MNI152NLin6Asym_res-02_T1w.nii.gz``."""
    parts = [f"tpl-{template}", f"res-{int(resolution):02d}"]
    if desc:
        parts.append(f"desc-{desc}")
    return "_".join(parts + [suffix]) + ".nii.gz"


def templateflow_home() -> Path:
    """The TEMPLATEFLOW_HOME that TemplateFlow uses in this process.

    TemplateFlow fixes it at import time, so this asks TemplateFlow rather than the environment:
    the answer is where ``templateflow.api.get`` will look.
    """
    from templateflow import conf

    return Path(conf.TF_HOME)


#: TemplateFlow's metadata of a template (resolutions, zooms); the derivatives writer reads it.
DESCRIPTION_FILE = "template_description.json"


def template_files(template: str, resolution: int) -> dict[str, Path]:
    """Paths of the files the pipeline needs, keyed ``"T1w"``, ``"brain_mask"`` and ``"description"``.

    These are the paths ``templateflow.api.get`` returns for the same query; they may not exist.
    """
    root = templateflow_home() / f"tpl-{template}"
    keys = {("T1w", None): "T1w", ("mask", "brain"): "brain_mask"}
    files = {
        keys[(suffix, desc)]: root / template_filename(template, resolution, suffix, desc)
        for suffix, desc in REQUIRED_FILES
    }
    files["description"] = root / DESCRIPTION_FILE
    return files


def _skeleton_description(template: str) -> bytes | None:
    """``template_description.json`` of ``template`` from the skeleton shipped in the templateflow package."""
    import zipfile
    from importlib.util import find_spec

    spec = find_spec("templateflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    skeleton = Path(list(spec.submodule_search_locations)[0]) / "conf" / "templateflow-skel.zip"
    try:
        with zipfile.ZipFile(skeleton) as archive:
            return archive.read(f"tpl-{template}/{DESCRIPTION_FILE}")
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def _problem(path: Path) -> str | None:
    """Why ``path`` is not a usable template file, or None when it is."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "an empty placeholder left by TemplateFlow"
    if path.name.endswith(".json"):
        import json

        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return "not valid JSON (a failed download?)"
        return None
    with path.open("rb") as fh:
        if fh.read(2) != _GZIP_MAGIC:
            return "not a gzip-compressed NIfTI (a failed download?)"
    return None


def shipped_template_files(template: str, resolution: int) -> dict[str, Path] | None:
    """The package's own copies of the files of ``template`` at ``resolution`` (keys ``"T1w"`` and
    ``"brain_mask"``), or None when the package does not ship them all."""
    root = offline_templates_dir() / f"tpl-{template}"
    keys = {("T1w", None): "T1w", ("mask", "brain"): "brain_mask"}
    files = {keys[(suffix, desc)]: root / template_filename(template, resolution, suffix, desc)
             for suffix, desc in REQUIRED_FILES}
    return files if all(_problem(path) is None for path in files.values()) else None


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the template copies shipped in the package."""
    return Path(path).resolve().is_relative_to(offline_templates_dir().resolve())


def _fetch_hint(template: str, resolution: int) -> str:
    return (f"`python -m hcld_bids.fetch_templates --template {template} --resolution {int(resolution)}` on a "
            f"machine with internet access (with the same TEMPLATEFLOW_HOME)")


def check_templates(template: str, resolution: int, *, shipped: bool = True) -> dict[str, Path]:
    """The template files of ``template`` at ``resolution``, checked on disk; nothing is downloaded.

    TemplateFlow's files in TEMPLATEFLOW_HOME when they are all usable (paths as :func:`template_files`).
    Otherwise, with ``shipped`` (the participant and train levels), the copies shipped in the package when
    it has them, with one warning line per process saying so. Otherwise :class:`MissingInputError` (66)
    with one line naming each unusable file and how to get it.
    """
    files = template_files(template, resolution)
    home = templateflow_home()
    problems = [(path, why) for path in files.values() if (why := _problem(path)) is not None]
    if not problems:
        return files
    named = "; ".join(f"{path.relative_to(home)} is {why}" for path, why in problems)
    copy = shipped_template_files(template, resolution) if shipped else None
    if copy is not None:
        key = (template, int(resolution))
        if key not in _ANNOUNCED:
            _ANNOUNCED.add(key)
            LOGGER.warning(
                "TemplateFlow has no usable %s files at resolution %d in TEMPLATEFLOW_HOME=%s (%s); using the copy "
                "shipped with hcld-bids (%s; its brain mask is the project's, not TemplateFlow's, see the NOTICE "
                "there); for TemplateFlow's own files run %s",
                template, int(resolution), home, named, copy["T1w"].parent, _fetch_hint(template, resolution))
        return copy
    offline = [f"{t} at resolution {r}" for t, r in offline_templates()]
    also = (f" (hcld-bids ships only {', '.join(offline)})" if offline and not shipped_template_files(
        template, resolution) else "")
    raise MissingInputError(
        f"TemplateFlow files needed for {template} at resolution {int(resolution)} are not "
        f"usable in TEMPLATEFLOW_HOME={home}: {named}. Run {_fetch_hint(template, resolution)}, or copy "
        f"tpl-{template}/ from a complete TemplateFlow directory into $TEMPLATEFLOW_HOME{also}."
    )


def template_resolutions(template: str) -> list[int] | None:
    """TemplateFlow resolution indices of ``template``, or ``None`` when TemplateFlow does not know it.

    Read from ``tpl-<template>/template_description.json`` in TEMPLATEFLOW_HOME (a custom template
    installed there counts), else from the skeleton shipped in the templateflow package; no network.
    """
    import json

    content = None
    installed = templateflow_home() / f"tpl-{template}" / DESCRIPTION_FILE
    try:
        content = json.loads(installed.read_text())
    except (OSError, ValueError):
        raw = _skeleton_description(template)
        if raw is not None:
            try:
                content = json.loads(raw)
            except ValueError:
                content = None
    if not isinstance(content, dict):
        return None
    resolutions = []
    for key in content.get("res") or {}:
        try:
            resolutions.append(int(key))
        except (TypeError, ValueError):
            continue
    return sorted(resolutions)


def offline_templates_dir() -> Path:
    """Directory of the template copies shipped in the package (TemplateFlow layout)."""
    return _OFFLINE_DIR


def offline_templates() -> list[tuple[str, int]]:
    """(template, resolution) pairs whose required files all ship in the package."""
    found = []
    base = offline_templates_dir()
    for tpl_dir in sorted(base.glob("tpl-*")):
        template = tpl_dir.name[len("tpl-"):]
        for t1w in sorted(tpl_dir.glob(f"tpl-{template}_res-*_T1w.nii.gz")):
            resolution = int(t1w.name.split("_res-")[1].split("_")[0])
            needed = [
                tpl_dir / template_filename(template, resolution, suffix, desc)
                for suffix, desc in REQUIRED_FILES
            ]
            if all(path.is_file() for path in needed):
                found.append((template, resolution))
    return found


def seed_templateflow_home(dest: str | os.PathLike) -> list[Path]:
    """Copy the package's offline templates into ``dest``, a TemplateFlow-layout directory.

    A file that already exists with content is left alone (it may be a real TemplateFlow
    download); empty placeholders are replaced. Each copy is written under a temporary name and
    renamed, so an interrupted seeding never leaves a truncated template. Returns the files written.
    """
    dest = Path(dest)
    written = []
    base = offline_templates_dir()
    for src in sorted(base.glob("tpl-*/*")):
        if not src.is_file() or not (src.name.endswith(".nii.gz") or src.name.endswith(".json")):
            continue
        target = dest / src.parent.name / src.name
        if target.is_file() and target.stat().st_size > 0:
            continue
        written.append(atomic_copy(src, target))
    for tpl_dir in sorted(base.glob("tpl-*")):
        target = write_template_description(dest, tpl_dir.name[len("tpl-"):])
        if target is not None:
            written.append(target)
    return written


def write_template_description(home: str | os.PathLike, template: str) -> Path | None:
    """Write ``tpl-<template>/template_description.json`` into ``home`` from the templateflow package's own
    skeleton, unless a non-empty one is there; return the path written, or None."""
    target = Path(home) / f"tpl-{template}" / DESCRIPTION_FILE
    if target.is_file() and target.stat().st_size > 0:
        return None
    content = _skeleton_description(template)
    if content is None:
        return None
    return atomic_write_bytes(target, content)
