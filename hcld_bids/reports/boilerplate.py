"""Methods boilerplate: ``OUTPUT_DIR/logs/CITATION.{md,bib,html}`` from the templates in ``boilerplate/``.

The templates (one jinja2 file per step of the workflow, ``boilerplate/*.md.j2``) are prose with the
actual settings of the run filled in: software versions, template, registration, intensity scaling,
model (name, hash, architecture, what it was trained on), target site or reference image, DDIM steps,
device. Citations are written ``{{ cite("key", ...) }}`` against ``boilerplate/references.bib``; the
Markdown gets author-year citations and a reference list, the BibTeX file the cited entries, the HTML
page both with links.

``boilerplate/`` lives at the top of the repository. An installed package carries a copy in
``hcld_bids/data/boilerplate`` (see :func:`boilerplate_dir`).
"""

from __future__ import annotations

import html
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import jinja2
from markupsafe import Markup

from ..bids.atomic import atomic_write_text

#: Sections of the methods text: (template file, title, levels whose runs it describes).
SECTIONS = (
    ("preprocessing.md.j2", "Anatomical preprocessing", ("participant", "train")),
    ("model.md.j2", "Harmonization model", ("participant", "train")),
    ("training.md.j2", "Training of the harmonization model", ("train",)),
    ("harmonization.md.j2", "Harmonization", ("participant",)),
    ("software.md.j2", "Software", ("participant", "train")),
)
BIB_FILE = "references.bib"
HTML_TEMPLATE = "citation.html.j2"

#: Distributions whose versions the methods text cites, by the name used in the context.
VERSION_DISTRIBUTIONS = {
    "hcld-bids": "hcld-bids",
    "nipype": "nipype",
    "pybids": "pybids",
    "templateflow": "templateflow",
    "antspyx": "antspyx",
    "torch": "torch",
    "numpy": "numpy",
    "nibabel": "nibabel",
    "niworkflows": "niworkflows",
    "scikit-image": "scikit-image",
}


def boilerplate_dir() -> Path:
    """Directory of the methods templates: the package copy ``hcld_bids/data/boilerplate`` when it
    exists (installed package), else ``boilerplate/`` of the source tree this module belongs to."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "data" / "boilerplate", here.parents[2] / "boilerplate"):
        if (candidate / BIB_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"methods templates not found in {here.parents[1] / 'data' / 'boilerplate'} or "
        f"{here.parents[2] / 'boilerplate'}; the hcld-bids installation is incomplete, reinstall it"
    )


# --- bibliography -------------------------------------------------------------------------------------

_LATEX = {r"\'e": "é", r"\'E": "É", r"\"o": "ö", r"\"u": "ü", r"\"a": "ä", r"\`e": "è", r"\'a": "á", r"\~n": "ñ"}


def _untex(text: str) -> str:
    for macro, char in _LATEX.items():
        text = text.replace("{" + macro + "}", char).replace(macro, char)
    return " ".join(text.replace("{", "").replace("}", "").split())


@dataclass(frozen=True)
class Reference:
    """One BibTeX entry: ``key``, ``kind`` (article, inproceedings, misc), raw ``fields`` and its source."""

    key: str
    kind: str
    fields: dict
    bibtex: str

    @property
    def authors(self) -> list[str]:
        """Family names of the authors, in order."""
        names = [n.strip() for n in _untex(self.fields.get("author", "")).split(" and ") if n.strip()]
        return [n.split(",")[0].strip() if "," in n else n.split()[-1] for n in names]

    @property
    def year(self) -> str:
        return self.fields.get("year", "n.d.")

    @property
    def short(self) -> str:
        """Author-year label: ``Wu et al., 2024``, ``Huang and Belongie, 2017``."""
        names = self.authors
        who = names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2 else f"{names[0]} et al."
        return f"{who}, {self.year}"

    @property
    def link(self) -> str | None:
        if self.fields.get("doi"):
            return f"https://doi.org/{self.fields['doi']}"
        return self.fields.get("url")

    def formatted(self) -> str:
        """Plain-text reference: authors (year). Title. Venue, volume(number), pages."""
        f = {k: _untex(v) for k, v in self.fields.items()}
        authors = [a.strip() for a in f.get("author", "").split(" and ")]
        if len(authors) > 10:
            authors = authors[:10] + ["et al."]
        venue = f.get("journal") or f.get("booktitle") or (
            f"arXiv:{f['eprint']}" if f.get("archiveprefix", "").lower() == "arxiv" else "")
        parts = [f"{'; '.join(authors)} ({self.year}). {f.get('title', '')}."]
        where = venue
        if f.get("volume"):
            where += f", {f['volume']}" + (f"({f['number']})" if f.get("number") else "")
        if f.get("pages"):
            where += f", {f['pages'].replace('--', '–')}"
        if where:
            parts.append(where + ".")
        return " ".join(parts)


def parse_bibtex(text: str) -> dict[str, Reference]:
    """Entries of a BibTeX file written as ours are (``field = {value}`` with balanced braces)."""
    references = {}
    for match in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        depth, index = 1, match.end()
        while depth and index < len(text):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            index += 1
        body = text[match.end(): index - 1]
        fields = {}
        for field in re.finditer(r"(\w+)\s*=\s*", body):
            start = field.end()
            if body[start] == "{":
                depth, end = 1, start + 1
                while depth:
                    depth += {"{": 1, "}": -1}.get(body[end], 0)
                    end += 1
                value = body[start + 1: end - 1]
            else:
                value = re.match(r"[^,\n]+", body[start:]).group(0).strip()
            fields.setdefault(field.group(1).lower(), value)
        key = match.group(2)
        references[key] = Reference(key, match.group(1).lower(), fields, text[match.start(): index].strip())
    return references


@lru_cache(maxsize=4)
def _bibliography(directory: str) -> dict[str, Reference]:
    return parse_bibtex((Path(directory) / BIB_FILE).read_text(encoding="utf-8"))


def bibliography() -> dict[str, Reference]:
    """All references of ``boilerplate/references.bib`` by key."""
    return _bibliography(str(boilerplate_dir()))


# --- context ------------------------------------------------------------------------------------------

def collect_versions() -> dict[str, str]:
    """Versions of Python and of the packages the methods text names (those installed)."""
    from .. import __version__

    versions = {"python": platform.python_version()}
    for name, distribution in VERSION_DISTRIBUTIONS.items():
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    versions["hcld-bids"] = __version__
    return versions


def _model_summary(manifest: Mapping | None) -> dict:
    """The parts of a model bundle manifest that the methods text describes."""
    from ..manifest import (
        is_demo_model,
        prototype_sites,
        trained_image_count,
        trained_sites,
        training_record,
        unrecorded_sites,
    )

    manifest = dict(manifest or {})
    autoencoder = dict((manifest.get("autoencoder") or {}).get("config") or {})
    unet = dict((manifest.get("unet") or {}).get("config") or {})
    # the networks' training data and the sites added later as prototypes only are two lists, never one
    sites = trained_sites(manifest)
    channels = autoencoder.get("channels")
    return {
        "name": manifest.get("name"),
        "sha256": manifest.get("sha256"),
        "autoencoder": {
            "channels": channels,
            "latent_channels": autoencoder.get("latent_channels"),
            "downsampling": int(autoencoder.get("patch_size") or 1) * 2 ** (len(channels) - 1) if channels else None,
            "patch_size": int(autoencoder.get("patch_size") or 1),
            "num_res_blocks": autoencoder.get("num_res_blocks"),
            "linear_skip": bool(autoencoder.get("linear_skip")),
        },
        "unet": {"channels": unet.get("channels"), "num_res_blocks": unet.get("num_res_blocks")},
        "noise_steps": (manifest.get("noise_schedule") or {}).get("num_train_timesteps")
        or (manifest.get("noise_schedule") or {}).get("num_steps"),
        "sites": sites,
        "n_images": (trained_image_count(manifest) or None) if sites else None,
        "training_recorded": training_record(manifest) is not None,
        "prototype_sites": prototype_sites(manifest),
        "unrecorded_sites": unrecorded_sites(manifest),
        "demo": is_demo_model(manifest),
        "training": dict(manifest.get("training") or {}),
    }


def citation_context(config=None, manifest: Mapping | None = None, **overrides) -> dict:
    """Context of the methods templates from a :class:`hcld_bids.config.Config` and a bundle manifest.

    Keys (all optional; a missing value leaves its phrase out of the text):

    ``level`` ("participant" or "train"), ``versions`` (:func:`collect_versions`), ``template``,
    ``template_source`` ("templateflow", or "shipped" for the copy in the package),
    ``template_resolution_mm``, ``grid_shape``, ``registration`` ("affine" or "syn"), ``n4`` (bool),
    ``intensity_scaling`` ({"low_percentile", "high_percentile"}), ``model`` (``name``, ``sha256``,
    ``source``, ``autoencoder`` {channels, latent_channels, downsampling, num_res_blocks}, ``unet``
    {channels, num_res_blocks}, ``noise_steps``, ``sites`` {site: n_images} and ``n_images`` of the training
    data only, ``prototype_sites`` {site: n_images} added without training, ``training_recorded``,
    ``demo``),
    ``target_site``, ``reference_image``, ``ddim_inversion_steps``, ``ddim_sampling_steps``, ``regime`` (the
    inference regime as a dict, :func:`hcld_bids.workflows.harmonization.inference_regime`), ``detail_gain``
    (the regime's detail gain toward this run's target, :meth:`hcld_bids.model.harmonize.Regime.detail_gain`;
    None without a regime), ``target_images`` (how many images the target's histogram and spectrum average: the
    site's ``n_images`` in the manifest, 1 for a reference image), ``target_added`` (the target site was added
    without training), ``calibration_weight`` (:meth:`~hcld_bids.model.harmonize.Regime.calibration_weight`
    toward this run's target), ``spectrum_exponent_one_image`` and ``head_share`` (the spectral gain's exponent
    toward one head, and the share of the calibrations that only averaging over heads gives back: toward n
    heads :meth:`~hcld_bids.model.harmonize.Regime.spectrum_exponent` is ``spectrum x (1 - head_share / n)``, and
    the histogram's weight toward a site added from n images ``1 - head_share / n``),
    ``device``,
    ``random_seed``, ``training`` (hyper-parameters: ae_epochs, ldm_epochs, lr_ae, lr_ldm, weight_*, ...).

    ``overrides`` replace top-level keys (e.g. ``device="cuda:0"`` once the device is resolved).
    """
    preprocessing = dict((manifest or {}).get("preprocessing") or {})
    context = {
        "level": "participant",
        "versions": collect_versions(),
        "template": preprocessing.get("template", "MNI152NLin6Asym"),
        "template_resolution_mm": preprocessing.get("resolution"),
        "template_source": "templateflow",
        "grid_shape": preprocessing.get("grid_shape") or preprocessing.get("shape"),
        "registration": preprocessing.get("registration", "affine"),
        "n4": True,
        "intensity_scaling": dict(preprocessing.get("intensity_scaling") or {"low_percentile": 0.5,
                                                                             "high_percentile": 99.5}),
        "model": _model_summary(manifest),
        "target_site": None,
        "reference_image": None,
        "ddim_inversion_steps": None,
        "ddim_sampling_steps": None,
        "regime": None,
        "detail_gain": None,
        "target_images": None,
        "target_added": False,
        "calibration_weight": None,
        "spectrum_exponent_one_image": None,
        "head_share": None,
        "device": None,
        "random_seed": None,
        "training": {},
    }
    if manifest is not None or config is not None:
        from ..workflows.harmonization import inference_regime

        try:
            context["regime"] = inference_regime(manifest or {}, config.workflow if config is not None else None)
        except (TypeError, ValueError):
            context["regime"] = None
    if config is not None:
        workflow = config.workflow
        context.update(
            level=config.execution.analysis_level,
            target_site=workflow.target_site,
            reference_image=str(workflow.reference_image) if workflow.reference_image else None,
            ddim_inversion_steps=(context["regime"] or {}).get("inversion_steps", workflow.ddim_inversion_steps),
            ddim_sampling_steps=(context["regime"] or {}).get("sampling_steps", workflow.ddim_sampling_steps),
            device=workflow.device,
            random_seed=workflow.random_seed,
            training={k: v for k, v in vars(config.training).items()},
        )
        context["model"]["source"] = workflow.model_source
    context.update(overrides)
    if context["regime"] is not None:
        from ..model.harmonize import Regime, added_site_images, site_images

        regime = Regime.from_dict(context["regime"])
        reference = not context["target_site"]
        added = None if reference else added_site_images(manifest or {}, context["target_site"])
        if "target_images" not in overrides:
            context["target_images"] = 1 if reference else site_images(manifest or {}, context["target_site"])
        if "target_added" not in overrides:
            context["target_added"] = added is not None
        derived = {
            "detail_gain": regime.detail_gain(reference or added is not None),
            "calibration_weight": regime.calibration_weight(1 if reference else added),
            "spectrum_exponent_one_image": regime.spectrum_exponent(1),
            "head_share": regime.head_share,
        }
        for key, value in derived.items():
            if key not in overrides:
                context[key] = float(f"{value:.6g}")  # 0.45, not 0.45000000000000007, in a methods text
    return context


# --- rendering ----------------------------------------------------------------------------------------

def _fmt_list(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1] if values else ""


def _environment(directory: Path, autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        autoescape=autoescape,
        undefined=jinja2.ChainableUndefined,
    )
    env.filters["and_list"] = _fmt_list
    env.filters["num"] = lambda value: format(value, "g") if isinstance(value, float) else value
    env.filters["device_phrase"] = _device_phrase
    env.filters["shape"] = lambda shape: " x ".join(str(int(s)) for s in shape) if shape else ""
    return env


class _Citer:
    """``cite("a", "b")`` in a template: author-year text, remembering the order of first citation."""

    def __init__(self, references: Mapping[str, Reference], html_links: bool):
        self.references = references
        self.html_links = html_links
        self.cited: list[str] = []

    def __call__(self, *keys: str):
        labels = []
        for key in keys:
            if key not in self.references:
                raise KeyError(f"the methods templates cite {key!r}, which {BIB_FILE} does not define")
            if key not in self.cited:
                self.cited.append(key)
            label = self.references[key].short
            labels.append(Markup(f'<a href="#ref-{key}">{html.escape(label)}</a>') if self.html_links else label)
        if self.html_links:
            return Markup("(") + Markup("; ").join(labels) + Markup(")")
        return "(" + "; ".join(labels) + ")"


def _device_phrase(device: str) -> str:
    """``cpu`` -> "a CPU", ``cuda:1`` -> "a CUDA GPU (cuda:1)"; ``auto`` (unresolved) says nothing."""
    device = str(device or "")
    if device in ("", "auto"):
        return "the available device"
    if device == "cpu":
        return "a CPU"
    if device.startswith("cuda"):
        return f"a CUDA GPU ({device})"
    return device


def _paragraph(text: str) -> str:
    """One paragraph from a template's wrapped lines: whitespace collapsed, none before punctuation."""
    text = " ".join(text.split())
    return re.sub(r"\s+([.,;:)])", r"\1", text).replace("( ", "(")


def render_methods(context: Mapping, *, html_links: bool = False) -> tuple[list[tuple[str, str]], list[Reference]]:
    """The methods sections ``[(title, paragraph), ...]`` and the cited references, in citation order."""
    directory = boilerplate_dir()
    references = bibliography()
    env = _environment(directory, autoescape=html_links)
    cite = _Citer(references, html_links)
    sections = []
    level = context.get("level", "participant")
    for template, title, levels in SECTIONS:
        if level not in levels:
            continue
        text = env.get_template(template).render(**context, cite=cite)
        text = _paragraph(str(text))
        if text:
            sections.append((title, Markup(text) if html_links else text))
    return sections, [references[key] for key in cite.cited]


def render_markdown(context: Mapping) -> str:
    sections, cited = render_methods(context)
    lines = ["# Methods", ""]
    level = "training and harmonization" if context.get("level") == "train" else "harmonization"
    lines += [
        f"*Boilerplate written by hcld-bids {context.get('versions', {}).get('hcld-bids', '')} for the {level} "
        "run of this output directory, with the settings of that run, to be adapted into the methods "
        "section of a manuscript.*",
        "",
    ]
    for title, text in sections:
        lines += [f"## {title}", "", text, ""]
    lines += ["## References", ""]
    lines += [f"{i}. {ref.formatted()}" + (f" <{ref.link}>" if ref.link else "") for i, ref in enumerate(cited, 1)]
    return "\n".join(lines) + "\n"


def render_bibtex(context: Mapping) -> str:
    _, cited = render_methods(context)
    return "\n\n".join(ref.bibtex for ref in cited) + "\n"


def render_html(context: Mapping) -> str:
    sections, cited = render_methods(context, html_links=True)
    env = _environment(boilerplate_dir(), autoescape=True)
    return env.get_template(HTML_TEMPLATE).render(
        context=context, sections=sections, references=cited,
        version=context.get("versions", {}).get("hcld-bids", ""),
    )


def write_citation(output_dir: str | os.PathLike, context: Mapping) -> dict[str, Path]:
    """Write ``OUTPUT_DIR/logs/CITATION.md``, ``.bib`` and ``.html`` atomically; returns their paths.

    ``context``: see :func:`citation_context`. The three files describe the same run; rerunning
    replaces them.
    """
    logs = Path(output_dir) / "logs"
    contents = {"md": render_markdown(context), "bib": render_bibtex(context), "html": render_html(context)}
    return {ext: atomic_write_text(logs / f"CITATION.{ext}", text) for ext, text in contents.items()}
