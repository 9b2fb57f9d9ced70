"""Fetch the TemplateFlow files a model needs into TEMPLATEFLOW_HOME.

Run it where there is internet (e.g. when building the container), with the TEMPLATEFLOW_HOME the
compute nodes will use::

    python -m hcld_bids.fetch_templates --template MNI152NLin6Asym --resolution 2
    python -m hcld_bids.fetch_templates --model path/to/model_bundle   # what that model needs

``--offline`` copies the files shipped in the package instead (MNI152NLin6Asym at 2 mm only; its
brain mask is the project's derived one, see the NOTICE next to it). Either way the files are then
checked; exit code 0 when they are all usable, 66 otherwise, with a one-line message.
"""

from __future__ import annotations

import argparse
import sys

from .errors import HCLDError, MissingInputError


def fetch(template: str, resolution: int) -> None:
    """Download missing or empty required files through the TemplateFlow client."""
    from templateflow import api

    from .templates import (
        REQUIRED_FILES,
        check_templates,
        offline_templates,
        shipped_template_files,
        templateflow_home,
        write_template_description,
    )

    write_template_description(templateflow_home(), template)
    try:
        check_templates(template, resolution, shipped=False)
        return  # already complete: no network needed
    except MissingInputError:
        pass
    for suffix, desc in REQUIRED_FILES:
        try:
            api.get(template, resolution=int(resolution), suffix=suffix, desc=desc,
                    extension=".nii.gz", raise_empty=True)
        except Exception as exc:  # requests/TemplateFlow raise many types when offline
            reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if shipped_template_files(template, resolution) is not None:
                raise MissingInputError(
                    f"no network: hcld-bids ships {template} at resolution {resolution}; run `python -m "
                    f"hcld_bids.fetch_templates --offline` to install that copy into TEMPLATEFLOW_HOME (the participant "
                    f"and train levels also use it by themselves when TemplateFlow has nothing); the download from "
                    f"TemplateFlow failed ({reason})"
                ) from exc
            raise MissingInputError(
                f"could not download {template} {suffix} (resolution {resolution}) from TemplateFlow ({reason}); "
                "check the network connection (hcld-bids ships only "
                + ", ".join(f"{t} at resolution {r}" for t, r in offline_templates()) + ")"
            ) from exc


def model_templates(model_dir) -> tuple[str, list[int]]:
    """Template name and resolutions named by a model bundle's manifest (``preprocessing`` block)."""
    import json
    from pathlib import Path

    manifest = Path(model_dir) / "manifest.json"
    try:
        spec = json.loads(manifest.read_text())["preprocessing"]
        return str(spec["template"]), [int(spec["resolution"])]
    except FileNotFoundError:
        raise MissingInputError(f"{manifest} does not exist; give a model bundle directory to --model") from None
    except (ValueError, KeyError, TypeError):
        raise MissingInputError(f"{manifest} has no usable 'preprocessing' block (template, resolution); "
                                "give a model bundle written by hcld-bids") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hcld_bids.fetch_templates",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", default="MNI152NLin6Asym")
    parser.add_argument("--resolution", type=int, action="append",
                        help="TemplateFlow resolution index (repeatable; default 2)")
    parser.add_argument("--model", metavar="DIR",
                        help="a model bundle: fetch the template and resolution its manifest names")
    parser.add_argument("--offline", action="store_true",
                        help="copy the package's offline templates instead of downloading")
    args = parser.parse_args(argv)
    resolutions = args.resolution or [2]

    from .templates import check_templates, seed_templateflow_home, templateflow_home

    try:
        if args.model:
            args.template, resolutions = model_templates(args.model)
        if args.offline:
            seed_templateflow_home(templateflow_home())
        else:
            for resolution in resolutions:
                fetch(args.template, resolution)
        for resolution in resolutions:
            files = check_templates(args.template, resolution, shipped=False)
            for path in files.values():
                print(path)
    except HCLDError as exc:
        print(f"hcld-bids: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
