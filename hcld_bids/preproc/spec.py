"""The "preprocessing" block of a model bundle manifest, and its check against this pipeline.

A model only makes sense on inputs preprocessed the way its training data were: same template and
resolution, same window of the template grid, same intensity scaling. The bundle records them;
loading a bundle compares them with what this version of the pipeline produces.
"""

from __future__ import annotations

import os

from ..errors import BadDataError
from .grid import GridSpec, model_grid
from .intensity import DEFAULT_PERCENTILES

#: Bumped when the meaning of the block changes.
SPEC_VERSION = 1
INTENSITY_METHOD = "robust-percentile-in-brain-mask"


def preprocessing_spec(template: str, resolution: int, *, registration: str = "affine",
                       grid: GridSpec | None = None) -> dict:
    """The block as this pipeline writes it for ``template`` at TemplateFlow ``resolution``.

    Example (MNI152NLin6Asym, 2)::

        {"version": 1, "template": "MNI152NLin6Asym", "resolution": 2, "registration": "affine",
         "grid": {"shape": [80, 96, 80], "start": [6, 8, 0]},
         "intensity_scaling": {"method": "robust-percentile-in-brain-mask",
                               "low_percentile": 0.5, "high_percentile": 99.5,
                               "clip": [0.0, 1.0]},
         "model_input": "brain-only"}
    """
    grid = grid or model_grid(template, resolution)
    low, high = DEFAULT_PERCENTILES
    return {
        "version": SPEC_VERSION,
        "template": template,
        "resolution": int(resolution),
        "registration": registration,
        "grid": grid.to_dict(),
        "intensity_scaling": {
            "method": INTENSITY_METHOD,
            "low_percentile": float(low),
            "high_percentile": float(high),
            "clip": [0.0, 1.0],
        },
        "model_input": "brain-only",
    }


def _differences(expected, found, path=""):
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in expected:
            where = f"{path}.{key}" if path else key
            if key not in found:
                yield f"{where} is missing (expected {expected[key]!r})"
            else:
                yield from _differences(expected[key], found[key], where)
    elif isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        if len(expected) != len(found) or any(list(_differences(e, f)) for e, f in zip(expected, found)):
            yield f"{path} is {list(found)!r}, this pipeline uses {list(expected)!r}"
    elif isinstance(expected, float) or isinstance(found, float):
        try:
            if abs(float(expected) - float(found)) > 1e-9:
                yield f"{path} is {found!r}, this pipeline uses {expected!r}"
        except (TypeError, ValueError):
            yield f"{path} is {found!r}, this pipeline uses {expected!r}"
    elif expected != found:
        yield f"{path} is {found!r}, this pipeline uses {expected!r}"


def _check_template(spec: dict, bundle) -> None:
    """The bundle's template must be one TemplateFlow knows, at a resolution it offers (65 otherwise)."""
    from ..templates import offline_templates, template_resolutions

    template, resolution = spec["template"], spec["resolution"]
    shipped = ", ".join(f"{t} at resolution {r}" for t, r in offline_templates()) or "none"
    if not isinstance(template, str) or not template:
        raise BadDataError(f"{bundle}: preprocessing template {template!r} is not a template name; hcld-bids "
                           f"supports TemplateFlow templates (this installation ships {shipped}).")
    resolutions = template_resolutions(template)
    if resolutions is None:
        raise BadDataError(
            f"{bundle}: preprocessing template {template!r} is not a TemplateFlow template (nor installed in "
            f"TEMPLATEFLOW_HOME); hcld-bids supports TemplateFlow templates (this installation ships {shipped}): "
            "use a bundle trained for one of them, or retrain."
        )
    if isinstance(resolution, bool) or not isinstance(resolution, (int, str)) or str(resolution).strip() not in {
            str(r) for r in resolutions} | {f"{r:02d}" for r in resolutions}:
        raise BadDataError(
            f"{bundle}: preprocessing resolution {resolution!r} is not a resolution of {template} in TemplateFlow "
            f"(it has {', '.join(map(str, resolutions)) or 'none'}); use a bundle trained at one of them."
        )


def check_preprocessing_spec(spec: dict, *, bundle: str | os.PathLike = "model bundle") -> dict:
    """Compare a bundle's "preprocessing" block with this pipeline; return the block if they agree.

    The reference is :func:`preprocessing_spec` for the bundle's own template, resolution and
    registration (a bundle may choose those), so what must match is everything that follows from
    them: grid, intensity scaling, model input, version. Raises :class:`BadDataError` naming
    ``bundle`` and every mismatch, in one line.
    """
    if not isinstance(spec, dict):
        raise BadDataError(f"{bundle}: the manifest has no 'preprocessing' object; rebuild the bundle with `hcld-bids ... train`.")
    missing = [key for key in ("template", "resolution") if key not in spec]
    if missing:
        raise BadDataError(
            f"{bundle}: the manifest's preprocessing block lacks {', '.join(missing)}; "
            "rebuild the bundle with this version of hcld-bids."
        )
    _check_template(spec, bundle)
    try:
        expected = preprocessing_spec(
            spec["template"], int(spec["resolution"]), registration=spec.get("registration", "affine")
        )
    except (ValueError, TypeError) as exc:
        raise BadDataError(f"{bundle}: the manifest's preprocessing block is invalid ({exc}); rebuild the bundle.") from exc
    problems = list(_differences(expected, spec))
    if problems:
        raise BadDataError(
            f"{bundle}: the model was trained on differently preprocessed images ("
            + "; ".join(problems)
            + "); use a bundle trained with this version of hcld-bids or retrain it."
        )
    return spec
