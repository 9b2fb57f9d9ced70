"""Does the distance from the source's *site* to the reference pick the reference calibration weight?

The earlier rules compared the source head with the reference head, so both heads' anatomy sat in the distance.
Here the source side is its trained site's mean histogram (stored in the bundle, 33-34 heads, anatomy averaged
out), so only the reference head's anatomy is left, and the weight shrinks the observed difference by the
spread one head has around its site mean:

    d = W1(site histogram of the source's site, reference histogram)
    w = clip(1 - (sigma / d)^2, floor, 1)

sigma is not fitted on the sweep: it is the RMS W1 of each validation head to its own site's stored histogram.
The source's site is either the true one or the trained site whose prototype's channel statistics are
nearest to the source latent (what the harmonizer can know at run time; the left-out site's prototype removed).

    PYTHONPATH=$PWD python benchmarks/results/reference_rule/probes/site_distance.py VAL_PACK BUNDLE \
        benchmarks/results/reference_rule/sweep_val_site*/pairs.tsv
"""
import sys, collections
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, "benchmarks")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_simulated import load_inputs
from _sweep import W, show as _show, sweep_pairs
from hcld_bids.model.bundle import load_bundle
from hcld_bids.model.harmonize import Harmonizer, brain_histogram
from hcld_bids.model.unet import condition_style
from hcld_bids.reports.metrics import wasserstein_1d

pack, bundle_path, sweeps = sys.argv[1], sys.argv[2], sys.argv[3:]
images = load_inputs(pack)
bundle = load_bundle(bundle_path)
sites = bundle.manifest["sites"]
site_hist = {s: np.asarray(v["intensity_histogram"]["density"], float) for s, v in sites.items()}
edges = np.asarray(next(iter(sites.values()))["intensity_histogram"]["edges"], float)
hists = {(sub, site): brain_histogram(vol, mask, len(edges) - 1)[1] for sub in images for site, (vol, mask) in images[sub].items()}
own = collections.defaultdict(list)
for (sub, site), h in hists.items():
    own[site].append(wasserstein_1d(h, site_hist[site], edges))
sigma_site = {s: float(np.sqrt(np.mean(np.square(v)))) for s, v in own.items()}
sigma = float(np.sqrt(np.mean(np.square(sum(own.values(), [])))))
print("RMS W1 of a validation head to its own site's stored histogram:",
      " ".join(f"{s} {v:.4f}" for s, v in sorted(sigma_site.items())), f"all {sigma:.4f}")

# the source's nearest trained site by latent channel statistics, without the left-out site's prototype
harmonizer = Harmonizer(bundle, device="cpu")
names = sorted(bundle.prototypes)
stats = torch.stack([torch.cat([bundle.prototype_stats[s]["channel_mean"].float(),
                                bundle.prototype_stats[s]["channel_std"].float().log()]) for s in names])
style = {}
for sub in images:
    for site, (vol, mask) in images[sub].items():
        z = harmonizer.encode(harmonizer._to_device([vol]))
        style[sub, site] = torch.cdist(condition_style(z).cpu(), stats).ravel().numpy()


def nearest(sub, site, left):
    d = style[sub, site].copy()
    d[names.index(left)] = np.inf
    return names[int(np.argmin(d))]


pairs = sweep_pairs(sweeps)
for p in pairs:
    href = hists[p["ref"], p["left"]]
    p["near"] = nearest(p["sub"], p["site"], p["left"])
    p["d_true"] = wasserstein_1d(site_hist[p["site"]], href, edges)
    p["d_near"] = wasserstein_1d(site_hist[p["near"]], href, edges)
    p["d_head"] = wasserstein_1d(hists[p["sub"], p["site"]], href, edges)
wrong = [p for p in pairs if p["near"] != p["site"]]
print(f"nearest trained site != true site for {len(wrong)} of {len(pairs)} pairs:",
      sorted({(p['pair'].split(':')[0], p['site'], p['near']) for p in wrong}))
for p in sorted(pairs, key=lambda p: p["d_true"]):
    print(f"{p['left']} {p['pair']:24s} d_site {p['d_true']:.4f} d_head {p['d_head']:.4f} best {p['best']:.2f}",
          " ".join("%+.4f" % (s - p["inp"]) for s in p["ssim"]))


def show(name, rule):
    _show(pairs, name, rule, width=44)


print("\nrule: mean SSIM / pairs worse than the input / worst change, per left-out site")
for w in W:
    show(f"fixed {w}", lambda p, w=w: w)
show("oracle", lambda p: p["best"])


def shrink(d, s, floor):
    return float(np.clip(1.0 - (s / max(d, 1e-9)) ** 2, floor, 1.0))


for key in ("d_true", "d_near", "d_head"):
    for scale in (0.75, 1.0, 1.25, 1.5):
        for floor in (0.0, 0.25):
            s = scale * sigma
            show(f"{key} sigma x{scale:g} ({s:.4f}) floor {floor:g}", lambda p, s=s, f=floor, k=key: shrink(p[k], s, f))

# Blend error model: mapping fully copies the anatomy difference of the two heads (A), not mapping leaves the
# scanner difference (S); the blend (1 - w) S + w A is smallest at w = S^2 / (S^2 + A^2). The head-to-head
# distance d_head^2 ~ S^2 + A^2, and S^2 ~ d_site^2 - sigma^2 (the reference head's own spread around a site).
print("\nblend-error rules: w = clip((d_site^2 - c sigma^2) / d_head^2, floor, 1)")
for key in ("d_true", "d_near"):
    for c in (0.0, 0.5, 1.0):
        for floor in (0.0, 0.25):
            show(f"{key} c {c:g} floor {floor:g}",
                 lambda p, c=c, f=floor, k=key: float(np.clip((p[k] ** 2 - c * sigma ** 2) / max(p["d_head"] ** 2, 1e-12), f, 1.0)))
