"""Which part of the reference path loses toward an unseen noisy site? Regime variants on chosen pairs."""
import sys, json, time
from dataclasses import replace
import numpy as np
sys.path.insert(0, "benchmarks")
from quality_simulated import load_inputs, image_metrics
from quality_reference_loso import reference_pairs
from hcld_bids.model.bundle import load_bundle
from hcld_bids.model.harmonize import Harmonizer, brain_histogram
pack, bundle, left, sources = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
images = load_inputs(pack)
h = Harmonizer(load_bundle(bundle))
R = h.default_regime
variants = {"default": R, "spectrum0": replace(R, spectrum=0.0), "restore0": replace(R, restore=0.0, restore_noisy=0.0),
            "detail0": replace(R, detail=0.0), "detail1": replace(R, detail=1.0), "restore1": replace(R, restore=1.0, restore_noisy=1.0),
            "spec0_cal1": replace(R, spectrum=0.0, reference_calibration=1.0)}
res = {k: [] for k in variants}
t0 = time.time()
for sub, site, ref in reference_pairs(images, left, 2):
    if site not in sources:
        continue
    inp, mask = images[sub][site]; tgt, tmask = images[sub][left]; rv, rm = images[ref][left]
    e, d = brain_histogram(rv, rm)
    base = image_metrics(inp, tgt, tmask, inp, mask, {"edges": e, "density": d})["ssim"]
    style = h.style_from_volume(rv)
    line = []
    for k, reg in variants.items():
        s = image_metrics(h.harmonize(inp, style, mask=mask, regime=reg), tgt, tmask, inp, mask, {"edges": e, "density": d})["ssim"] - base
        res[k].append(s); line.append(f"{k} {s:+.4f}")
    print(f"{sub}:{site}:{ref}", " ".join(line), f"{time.time()-t0:.0f}s", flush=True)
for k, v in res.items():
    v = np.array(v); print(f"{k:12s} mean {v.mean():+.4f} worse {(v<0).sum()}/{len(v)} worst {v.min():+.4f}")
