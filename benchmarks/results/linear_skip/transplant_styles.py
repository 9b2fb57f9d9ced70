"""transplant_styles.py A B OUT: a copy of bundle B with the per-site histograms and spectra of bundle A (prototypes, networks and the rest of B), so that two models are compared under the same calibration targets."""
import json, shutil, sys
from pathlib import Path
from hcld_bids.model.bundle import load_bundle, _rewrite, _manifest_extra, _restoration_of
src_styles, src, dst = sys.argv[1:4]
if Path(dst).exists():
    shutil.rmtree(dst)
shutil.copytree(src, dst)
a = json.loads((Path(src_styles) / "manifest.json").read_text())["sites"]
b = load_bundle(dst)
extra = _manifest_extra(b)
for site, entry in extra["sites"].items():
    entry["intensity_histogram"] = a[site]["intensity_histogram"]
    entry["power_spectrum"] = a[site]["power_spectrum"]
nb = _rewrite(b, {s: b.prototype(s) for s in b.prototypes}, extra, "cpu", **_restoration_of(b))
print(dst, sorted(nb.prototypes), nb.manifest["inference"])
