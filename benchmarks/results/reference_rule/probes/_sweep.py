"""Shared by the probes: the pairs of the calibration-weight sweep rows (quality_reference_loso.py
--reference-calibration, one ``sweep_val_<site>/pairs.tsv`` per left-out site), the score of a rule that sets
the weight of each pair, and the 3-class tissue mixture of a head's brain intensities."""
import collections
import csv

import numpy as np

W = [0, 0.25, 0.5, 0.75, 1]  # the swept calibration weights


def sweep_pairs(paths):
    """One dict per pair: ``left`` (the left-out site), ``pair``, ``sub``, ``site``, ``ref``, ``methods`` (the
    rows by method), ``ssim`` (at each weight of ``W``), ``inp`` (the input's SSIM), ``best`` (the best weight)."""
    pairs = []
    for path in paths:
        rows = collections.defaultdict(dict)
        for r in csv.DictReader(open(path), delimiter="\t"):
            rows[r["pair"]][r["method"]] = r
        left = path.split("/")[-2].replace("sweep_val_", "")
        for pair, m in rows.items():
            sub, site, ref = pair.split(":")
            ssim = np.array([float(m[f"hcld_ref_cal{w:g}"]["ssim"]) for w in W])
            pairs.append(dict(left=left, pair=pair, sub=sub, site=site, ref=ref, methods=m, ssim=ssim,
                              inp=float(m["input"]["ssim"]), best=W[int(np.argmax(ssim))]))
    return pairs


def show(pairs, name, rule, width=30):
    """Print a rule's mean SSIM / pairs worse than the input / worst change, over all pairs and per left-out site
    (SSIM interpolated between the swept weights)."""
    by = collections.defaultdict(list)
    for p in pairs:
        v = float(np.interp(rule(p), W, p["ssim"]))
        by[p["left"]].append((v, v - p["inp"]))
        by["ALL"].append((v, v - p["inp"]))
    print(f"{name:{width}s}", "  ".join(f"{k}:{np.mean([a for a, _ in v]):.4f}/{sum(d < 0 for _, d in v)}/{min(d for _, d in v):+.4f}"
                                      for k, v in sorted(by.items())))


def tissue_mixture(vol, mask):
    """``(means, fractions)`` of a 3-class Gaussian mixture of the brain intensities, dark to bright."""
    from sklearn.mixture import GaussianMixture

    v = vol[mask > 0].reshape(-1, 1).astype(np.float64)
    g = GaussianMixture(3, random_state=0, means_init=np.quantile(v, [0.1, 0.45, 0.85]).reshape(-1, 1)).fit(v[::4])
    order = np.argsort(g.means_.ravel())
    return g.means_.ravel()[order], np.bincount(g.predict(v), minlength=3)[order] / len(v)


def calibrated_ssims(img, mask, hist, weights, truth, truth_mask):
    """``{weight: SSIM to the same head}`` of ``img`` calibrated onto ``hist`` with each weight (zero outside the
    mask), as the harmonizer's last step does."""
    from hcld_bids.model.harmonize import calibrate
    from quality_simulated import brain_ssim

    out = {}
    for w in weights:
        cal = calibrate(img, mask, hist, w)
        cal[~mask] = 0.0
        out[w] = brain_ssim(cal, truth, truth_mask, mask)
    return out


def cell(values, inputs):
    """``mean / pairs below the input / worst change`` of a method's SSIMs against the inputs'."""
    v, d = np.asarray(values), np.asarray(values) - np.asarray(inputs)
    return f"{v.mean():.4f}/{int((d < 0).sum()):3d}/{d.min():+.4f}"
