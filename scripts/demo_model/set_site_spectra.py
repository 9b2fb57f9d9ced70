"""Write the per-site power spectra of the spectral calibration into a bundle made before it existed.

    python scripts/demo_model/set_site_spectra.py --bundle BUNDLE --pack DATA/pack-train [--inference KEY=VALUE ...]

The spectra (:func:`hcld_bids.model.spectrum.site_spectra`) are computed from the pack of the images the
bundle was trained on (``pack_inputs.py``), for every site of the bundle that has none
(:func:`train_demo.add_missing_spectra`); the weights, prototypes and intensity histograms are left as they are. ``--inference`` sets keys of the manifest's ``inference`` block (checked by
:class:`hcld_bids.model.harmonize.Regime`). The manifest is replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="model bundle folder (its manifest.json is updated)")
    p.add_argument("--pack", type=Path, required=True, help="pack of the bundle's training images")
    p.add_argument("--inference", nargs="*", default=[], metavar="KEY=VALUE",
                   help="inference settings to change (numbers or true/false)")
    return p.parse_args(argv)


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return float(text) if any(c in text for c in ".e") else int(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    from hcld_bids.model.harmonize import Regime
    from train_demo import add_missing_spectra, load_pack

    path = args.bundle / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{args.bundle}: no manifest.json; give a model bundle folder")
    manifest = json.loads(path.read_text())
    volumes, masks, sites, _ = load_pack(args.pack)
    missing = sorted(set(manifest.get("sites") or {}) - set(sites))
    if missing:
        raise SystemExit(f"{args.pack}: no images of the bundle's sites {', '.join(missing)}; give the pack the "
                         f"bundle was trained on")
    add_missing_spectra(manifest, volumes, masks, sites)
    changes = {}
    for item in args.inference:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--inference {item}: expected KEY=VALUE")
        changes[key] = _value(value)
    inference = {**(manifest.get("inference") or {}), **changes}
    try:
        Regime.from_dict(inference)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--inference: {exc}") from None
    manifest["inference"] = inference
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    print(f"{path}: power spectra of {', '.join(sorted(manifest['sites']))} written from {len(volumes)} "
          f"image(s)" + (f"; inference {changes}" if changes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
