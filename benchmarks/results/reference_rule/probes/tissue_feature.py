"""Does a scanner-only histogram distance pick the reference calibration weight? Tissue means (a 3-class Gaussian
mixture of the brain intensities) move with the scanner's contrast and hardly with the head's tissue
proportions; the pair's mean shift is scored against the best weight of each pair of the sweep."""
import sys, csv, collections
import numpy as np
sys.path.insert(0, "benchmarks")
from quality_simulated import load_inputs
from sklearn.mixture import GaussianMixture
pack, sweeps = sys.argv[1], sys.argv[2:]
images = load_inputs(pack)
means = {}
for s in images:
    for site, (vol, mask) in images[s].items():
        v = vol[mask > 0].reshape(-1, 1).astype(np.float64)
        g = GaussianMixture(3, random_state=0, means_init=np.quantile(v, [0.1, 0.45, 0.85]).reshape(-1, 1)).fit(v[::4])
        means[s, site] = np.sort(g.means_.ravel())
W = [0, 0.25, 0.5, 0.75, 1]
pairs = []
for path in sweeps:
    P = collections.defaultdict(dict)
    for r in csv.DictReader(open(path), delimiter="\t"):
        P[r["pair"]][r["method"]] = r
    left = path.split("/")[-2]
    for pair, m in P.items():
        sub, site, ref = pair.split(":")
        tgt = left.replace("sweep_val_", "")
        shift = means[sub, site] - means[ref, tgt]
        ssim = np.array([float(m[f"hcld_ref_cal{w:g}"]["ssim"]) for w in W]); inp = float(m["input"]["ssim"])
        pairs.append(dict(left=tgt, pair=pair, shift=float(np.sqrt(np.mean(shift[1:] ** 2))), ssim=ssim, inp=inp,
                          best=W[int(np.argmax(ssim))]))
for p in sorted(pairs, key=lambda p: p["shift"]):
    print(f"{p['left']} {p['pair']:24s} shift {p['shift']:.4f} best {p['best']:.2f}", " ".join("%+.4f" % (s - p["inp"]) for s in p["ssim"]))
def show(name, rule):
    by = collections.defaultdict(list)
    for p in pairs:
        v = float(np.interp(rule(p), W, p["ssim"])); by[p["left"]].append((v, v - p["inp"])); by["ALL"].append((v, v - p["inp"]))
    print(f"{name:30s}", "  ".join(f"{k}:{np.mean([a for a, _ in v]):.4f}/{sum(d < 0 for _, d in v)}/{min(d for _, d in v):+.4f}" for k, v in sorted(by.items())))
for w in W:
    show(f"fixed {w}", lambda p, w=w: w)
for lo, hi in ((0.01, 0.04), (0.01, 0.06), (0.02, 0.05), (0.02, 0.08), (0.0, 0.05), (0.0, 0.08), (0.03, 0.08)):
    for w0 in (0.0, 0.25):
        show(f"ramp {lo}-{hi} from {w0}", lambda p, lo=lo, hi=hi, w0=w0: w0 + (1 - w0) * float(np.clip((p["shift"] - lo) / (hi - lo), 0, 1)))
