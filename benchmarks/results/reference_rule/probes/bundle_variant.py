"""bundle_variant.py SRC DST [--drop SITE] [--inference JSON]: a copy of a bundle without one site's prototype and/or with changes to its inference block (the leave-one-site-out bundles of RESULTS.md)."""
import argparse, json, shutil
from pathlib import Path
from hcld_bids.model.bundle import load_bundle, _rewrite, _manifest_extra, _restoration_of
ap = argparse.ArgumentParser()
ap.add_argument("src"); ap.add_argument("dst"); ap.add_argument("--drop", default=None)
ap.add_argument("--inference", default="{}")
a = ap.parse_args()
if Path(a.dst).exists():
    shutil.rmtree(a.dst)
shutil.copytree(a.src, a.dst)
b = load_bundle(a.dst)
extra = _manifest_extra(b)
protos = {s: b.prototype(s) for s in b.prototypes if s != a.drop}
if a.drop:
    extra.get("sites", {}).pop(a.drop, None)
extra["inference"] = dict(extra.get("inference") or {}, **json.loads(a.inference))
nb = _rewrite(b, protos, extra, "cpu", **_restoration_of(b))
print(a.dst, sorted(nb.prototypes), nb.manifest["inference"])
