"""Does a scanner-only histogram distance pick the reference calibration weight? Tissue means (a 3-class Gaussian
mixture of the brain intensities) move with the scanner's contrast and hardly with the head's tissue
proportions; the pair's mean shift is scored against the best weight of each pair of the sweep."""
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, "benchmarks")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_simulated import load_inputs
from _sweep import W, show as _show, sweep_pairs, tissue_mixture
pack, sweeps = sys.argv[1], sys.argv[2:]
images = load_inputs(pack)
means = {(s, site): tissue_mixture(vol, mask)[0] for s in images for site, (vol, mask) in images[s].items()}
pairs = sweep_pairs(sweeps)
for p in pairs:
    shift = means[p["sub"], p["site"]] - means[p["ref"], p["left"]]
    p["shift"] = float(np.sqrt(np.mean(shift[1:] ** 2)))
for p in sorted(pairs, key=lambda p: p["shift"]):
    print(f"{p['left']} {p['pair']:24s} shift {p['shift']:.4f} best {p['best']:.2f}", " ".join("%+.4f" % (s - p["inp"]) for s in p["ssim"]))
def show(name, rule):
    _show(pairs, name, rule)
for w in W:
    show(f"fixed {w}", lambda p, w=w: w)
for lo, hi in ((0.01, 0.04), (0.01, 0.06), (0.02, 0.05), (0.02, 0.08), (0.0, 0.05), (0.0, 0.08), (0.03, 0.08)):
    for w0 in (0.0, 0.25):
        show(f"ramp {lo}-{hi} from {w0}", lambda p, lo=lo, hi=hi, w0=w0: w0 + (1 - w0) * float(np.clip((p["shift"] - lo) / (hi - lo), 0, 1)))
