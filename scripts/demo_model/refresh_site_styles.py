#!/usr/bin/env python
"""Give a bundle's sites new styles from a pack, networks unchanged: prototypes, histograms and spectra.

A bundle's per-site styles (the latent prototype, the brain-intensity histogram of the calibration and the
power spectrum of the spectral calibration) describe the site's images as the preprocessing placed them. When
the preprocessing changes (e.g. the registration), the same training images preprocessed again give the styles
the harmonizer meets at run time, without retraining the networks:

    PYTHONPATH=$PWD python scripts/demo_model/refresh_site_styles.py --bundle hcld_bids/data/models/demo \\
        --pack DATA/pack-train-new --out NEW_BUNDLE

The histograms and spectra are those ``pack_inputs.py`` computed from the preprocessed volumes
(``manifest_base.json``; spectra it lacks are computed from the pack's volumes); the prototypes are encoded by the bundle's autoencoder from the pack's volumes, as
``train_demo.py`` does. Every site of the bundle must be in the pack; ``--out`` must not exist.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="model bundle folder (left as it is)")
    p.add_argument("--pack", type=Path, required=True, help="pack_inputs.py folder of the bundle's training images")
    p.add_argument("--out", type=Path, required=True, help="new bundle folder (must not exist)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from hcld_bids.model.bundle import add_prototypes
    from train_demo import load_pack

    manifest_path, base_path = args.bundle / "manifest.json", args.pack / "manifest_base.json"
    if not manifest_path.is_file():
        raise SystemExit(f"{args.bundle}: no manifest.json; give a model bundle folder")
    if not base_path.is_file():
        raise SystemExit(f"{args.pack}: no manifest_base.json; give a folder written by pack_inputs.py")
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; give a new folder")
    bundle_sites = sorted(json.loads(manifest_path.read_text()).get("sites") or {})
    base_sites = json.loads(base_path.read_text())["sites"]
    volumes, masks, sites, _ = load_pack(args.pack)
    missing = [s for s in bundle_sites if s not in base_sites or s not in sites]
    if missing:
        raise SystemExit(f"{args.pack}: no images of the bundle's sites {', '.join(missing)}; give the pack of "
                         f"the images the bundle was trained on")
    if any("power_spectrum" not in base_sites[s] for s in bundle_sites):
        from hcld_bids.model.spectrum import site_spectra

        for site, spectrum in site_spectra(volumes, masks, sites).items():
            base_sites[site].setdefault("power_spectrum", spectrum)
    by_site = {s: [v for v, site in zip(volumes, sites) if site == s] for s in bundle_sites}
    source = f"scripts/demo_model/refresh_site_styles.py, pack {args.pack.name}"
    info = {s: {**base_sites[s], "styles_from": source} for s in bundle_sites}
    tmp = args.out.with_name(f".{args.out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(args.bundle, tmp)
    add_prototypes(tmp, by_site, overwrite_sites=True, site_info=info)
    tmp.replace(args.out)
    print(f"{args.out}: styles of {', '.join(bundle_sites)} from {len(volumes)} images of {args.pack}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
