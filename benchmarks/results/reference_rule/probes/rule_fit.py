"""Per-pair SSIM as a function of the reference calibration weight (sweep rows), and rules that set the weight
from the histogram distances of the pair."""
import sys, csv, collections, numpy as np
W = [0, 0.25, 0.5, 0.75, 1]
rows = []
for path in sys.argv[1:]:
    rows += [dict(r, file=path) for r in csv.DictReader(open(path), delimiter="\t")]
P = collections.defaultdict(dict)
for r in rows:
    P[(r["file"], r["pair"])][r["method"]] = r
pairs = []
for (f, pair), m in P.items():
    s = np.array([float(m[f"hcld_ref_cal{w:g}"]["ssim"]) for w in W])
    pairs.append(dict(file=f.split("/")[-2], pair=pair, source=m["input"]["source"], ssim=s, inp=float(m["input"]["ssim"]),
                      d_in=float(m["input"]["w1_site"]), d_raw=float(m["hcld_ref_cal0"]["w1_site"]),
                      hm=float(m["histmatch_ref"]["ssim"]), default=float(m["hcld_ref"]["ssim"])))
def at(p, w):
    return float(np.interp(w, W, p["ssim"]))
def score(rule, sel=None):
    out = collections.defaultdict(list)
    for p in pairs:
        w = rule(p); d = at(p, w) - p["inp"]
        out[p["file"]].append((at(p, w), d))
    res = {}
    for f, v in out.items():
        v = np.array(v); res[f] = (v[:, 0].mean(), int((v[:, 1] < 0).sum()), v[:, 1].min())
    allv = np.concatenate([np.array(v) for v in out.values()])
    res["ALL"] = (allv[:, 0].mean(), int((allv[:, 1] < 0).sum()), allv[:, 1].min())
    return res
def show(name, rule):
    r = score(rule)
    print(f"{name:38s}", "  ".join(f"{k}:{v[0]:.4f}/{v[1]}/{v[2]:+.4f}" for k, v in sorted(r.items())))
if __name__ == "__main__":
    for p in sorted(pairs, key=lambda p: (p["file"], p["d_in"])):
        best = W[int(np.argmax(p["ssim"]))]
        print(p["file"], p["pair"], "d_in %.4f d_raw %.4f best w %.2f" % (p["d_in"], p["d_raw"], best),
              " ".join("%+.4f" % (s - p["inp"]) for s in p["ssim"]))
    for w in W:
        show(f"fixed {w}", lambda p, w=w: w)
    show("oracle", lambda p: W[int(np.argmax(p["ssim"]))])
    for key in ("d_in", "d_raw"):
        for s in (0.015, 0.02, 0.025, 0.03, 0.035, 0.04):
            for lo in (0.25, 0.5):
                show(f"{key} 1-(s/d)^2 s={s} lo={lo}", lambda p, s=s, lo=lo, key=key: float(np.clip(1 - (s / max(p[key], 1e-6))**2, lo, 1)))
