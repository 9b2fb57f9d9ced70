"""Participant report: ``OUTPUT_DIR/sub-<label>.html`` with its figures in ``sub-<label>/figures/``.

One section per template-space T1w of the participant (all sessions and runs): QC flags first, then the
QC numbers against their thresholds, before/after mosaics in three planes, the difference image, the
map of local structure preservation, the brain mask on the whole-head image, intensity histograms of
input, output and target style, and the provenance recorded in the sidecar. The page has its style
inline and refers only to figures under ``sub-<label>/figures/`` (relative links), so the output
directory can be copied and opened offline.

The figures (matplotlib, imported only where they are drawn) are drawn one after the other, or by the
worker processes of an ``executor`` (:func:`write_participant_report`), several at once.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from pathlib import Path

import jinja2
import nibabel as nib
import numpy as np
from markupsafe import Markup

from .. import __version__
from ..bids.atomic import atomic_write_text
from ..errors import NoDataError
from . import metrics
from .outputs import ImageRecord, find_images, find_strays

LOGGER = logging.getLogger("hcld_bids.reports")
TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "reports"
#: Planes of the before/after mosaics (:data:`hcld_bids.reports.figures.PLANES`, without importing matplotlib).
PLANES = ("axial", "coronal", "sagittal")

#: What each flag means, shown next to it in the reports.
FLAG_TEXT = {
    metrics.FLAG_STRUCTURE: "anatomy changed: whole-brain structure preservation below "
                            f"{metrics.STRUCTURE_THRESHOLD}",
    metrics.FLAG_STRUCTURE_LOCAL: "anatomy changed in one region: a 24 mm block below "
                                  f"{metrics.LOCAL_STRUCTURE_THRESHOLD}",
    metrics.FLAG_MASK: f"part of the brain missing in the output: mask Dice below {metrics.MASK_DICE_THRESHOLD}",
    metrics.FLAG_FARTHER: "output farther from the target intensity distribution than the input",
    metrics.FLAG_EMPTY: "the output holds no image inside the brain",
    metrics.FLAG_NOT_A_BRAIN: "the input does not look like a brain where the template has one (template "
                              f"similarity below {metrics.TEMPLATE_SIMILARITY_THRESHOLD}): not a T1w head image, or "
                              "its registration failed",
    "missing-harmonized": "preprocessed, but no harmonized image (the run did not finish)",
    "missing-preproc": "no preprocessed image next to the harmonized one",
    "missing-mask": "no brain mask next to the harmonized image",
    "missing-sidecar": "the sidecar of the harmonized image is missing or unreadable",
    "missing-qc": "the sidecar has no QC block; values were computed by the report",
    "outlier": "far from the other images of its target (robust z-score of the distance to the target above 3.5)",
    "not-own-anatomy": "the harmonized image is more like another participant's input than its own: it lost its "
                       "anatomy",
}


def template_environment() -> jinja2.Environment:
    """Jinja2 environment of the report templates (autoescaped HTML)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    # our own style sheet, inlined verbatim (escaping would turn its quotes into entities and break it)
    env.globals["css"] = Markup((TEMPLATES / "report.css").read_text())
    env.globals["flag_text"] = FLAG_TEXT
    return env


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"


def _label(subject: str) -> str:
    return subject[4:] if subject.startswith("sub-") else subject


def _flatten(prefix: str, value, rows: list) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, rows)
    elif isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        rows.append((prefix, ", ".join(str(v) for v in value)))
    else:
        rows.append((prefix, "n/a" if value is None else str(value)))


def provenance_rows(record: ImageRecord) -> list[tuple[str, str]]:
    """The sidecar's Sources, SkullStripped and HCLD block as (key, value) rows, nested keys dotted."""
    sidecar = record.sidecar or {}
    rows: list[tuple[str, str]] = []
    for key in ("Sources", "SkullStripped"):
        if key in sidecar:
            _flatten(key, sidecar[key], rows)
    _flatten("", sidecar.get("HCLD") or {}, rows)
    return rows


def _load(path: Path | None) -> np.ndarray | None:
    return None if path is None else np.asarray(nib.load(path).dataobj, dtype=np.float32)


def _figure_names(record: ImageRecord) -> dict[str, str]:
    base = f"{record.prefix}_space-{record.entities['space']}"
    if record.entities.get("resolution"):
        base += f"_res-{record.entities['resolution']}"
    names = {f"mosaic_{plane}": f"{base}_desc-{plane}_T1w.png" for plane in PLANES}
    names.update(difference=f"{base}_desc-difference_T1w.png", structure=f"{base}_desc-structure_T1w.png",
                 mask=f"{base}_desc-brainmask_T1w.png", histogram=f"{base}_desc-histogram_T1w.svg")
    return names


def _draw(name: str, args: tuple, path: Path) -> str:
    from . import figures

    return figures.render(name, args, path)


def _image_section(output_dir: Path, record: ImageRecord, figure_dir: Path, draw=_draw) -> dict:
    """Figures and tables of one image; figures written into ``figure_dir`` by ``draw(function name of
    :mod:`.figures`, its arguments, path)``."""
    label = record.subject
    relative_dir = f"sub-{label}/figures"
    section = {"id": record.prefix, "name": record.relative(output_dir), "problems": list(record.problems),
               "figures": {}, "qc": None, "flags": [], "provenance": provenance_rows(record),
               "hcld": record.hcld, "local": None}
    preproc, mask, harmonized = _load(record.preproc), _load(record.mask), _load(record.harmonized)
    names = _figure_names(record)

    def emit(key: str, function: str, *args) -> None:
        draw(function, args, figure_dir / names[key])
        section["figures"][key] = f"{relative_dir}/{names[key]}"

    if preproc is not None and mask is not None:
        emit("mask", "mask_overlay", preproc, mask)
    if preproc is None or mask is None or harmonized is None:
        return section
    before = np.where(mask > 0, preproc, 0)
    for plane in PLANES:
        emit(f"mosaic_{plane}", "mosaic", {"input": before, "harmonized": harmonized}, mask, plane)
    emit("difference", "difference_map", preproc, harmonized, mask)
    voxel = nib.load(record.preproc).header.get_zooms()[:3]
    sp, blocks, block = metrics.structure_scores(preproc, harmonized, mask, voxel_size_mm=voxel)
    section["local"] = metrics.worst_block(blocks)
    emit("structure", "structure_map_figure", preproc, mask, blocks, block, metrics.LOCAL_STRUCTURE_THRESHOLD)
    qc = record.qc
    if qc is None:  # an older or foreign sidecar: recompute what needs no target
        edges, input_hist = metrics.brain_histogram(preproc, mask)
        qc = {"HistogramBins": edges.tolist(), "InputHistogram": input_hist.tolist(),
              "OutputHistogram": metrics.brain_histogram(harmonized, mask)[1].tolist(), "TargetHistogram": None,
              "WassersteinInputToTarget": None, "WassersteinOutputToTarget": None, "StructurePreservation": sp,
              "MaskDice": metrics.mask_dice(mask, metrics.output_mask(harmonized, mask))}
        qc["Flags"] = metrics.qc_flags({k: (math.nan if v is None else v) for k, v in qc.items()
                                        if not isinstance(v, list)}, section["local"])
    section["qc"] = qc
    section["flags"] = list(qc.get("Flags") or [])
    curves = {"input": qc["InputHistogram"], "harmonized": qc["OutputHistogram"]}
    styles = {"input": {"color": "#7f7f7f"}, "harmonized": {"color": "#1f77b4"},
              "target style": {"color": "black", "linestyle": "--"}}
    if qc.get("TargetHistogram"):
        curves["target style"] = qc["TargetHistogram"]
    emit("histogram", "histogram_figure", qc["HistogramBins"], curves, styles)
    return section


def write_participant_report(output_dir: str | os.PathLike, subject: str, *, config=None, executor=None) -> Path:
    """Write ``OUTPUT_DIR/sub-<label>.html`` (+ ``sub-<label>/figures/``) from the subject's outputs.

    ``subject``: label with or without ``sub-``. ``config``: the run's :class:`hcld_bids.config.Config`
    (optional; its saved TOML in ``logs/`` is linked). ``executor``: a :class:`concurrent.futures.Executor`
    whose workers draw the figures, several at once (default: drawn here, one after the other; the page is
    the same). Raises :class:`hcld_bids.errors.NoDataError` when OUTPUT_DIR holds nothing of this subject.
    Returns the path of the HTML file.
    """
    output_dir = Path(output_dir)
    label = _label(subject)
    records = find_images(output_dir, label)
    if not records:
        raise NoDataError(
            f"{output_dir} holds no preprocessed or harmonized image of sub-{label}; run the participant level "
            f"for it before writing its report"
        )
    figure_dir = output_dir / f"sub-{label}" / "figures"
    if executor is None:
        sections = [_image_section(output_dir, record, figure_dir) for record in records]
    else:
        jobs = []
        sections = [_image_section(output_dir, record, figure_dir,
                                   draw=lambda *job: jobs.append(executor.submit(_draw, *job)))
                    for record in records]
        for job in jobs:  # every figure is written before the page that shows it
            job.result()
    strays = [p.relative_to(output_dir).as_posix() for p in find_strays(output_dir, label)]
    links = {}
    if (output_dir / "logs" / "CITATION.html").is_file():
        links["methods text (CITATION.html)"] = "logs/CITATION.html"
    if config is not None:
        saved = Path("logs") / config.file_name
        if (output_dir / saved).is_file():
            links[f"run configuration ({config.file_name})"] = saved.as_posix()
    for section, record in zip(sections, records):
        section["at_target"] = record.at_target
    html = template_environment().get_template("participant.html.j2").render(
        subject=label, sections=sections, strays=strays, links=links, version=__version__,
        demo=any(record.demo for record in records),
        failed=[s for s in sections if s["flags"] or s["problems"]],
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        thresholds={"structure": metrics.STRUCTURE_THRESHOLD, "local": metrics.LOCAL_STRUCTURE_THRESHOLD,
                    "dice": metrics.MASK_DICE_THRESHOLD, "template": metrics.TEMPLATE_SIMILARITY_THRESHOLD},
    )
    return atomic_write_text(output_dir / f"sub-{label}.html", html)
