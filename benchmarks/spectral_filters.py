#!/usr/bin/env python
"""How far can a linear, site-level filter take an image toward the same head at another site?

For the spectral calibration (:mod:`hcld_bids.model.spectrum`): on traveling heads (``--inputs``, as for
quality_simulated.py), every ordered site pair of the ``--eval`` heads, the source image is first mapped
toward the target site (``--base histmatch``: brain histogram matching onto the target site's histogram;
``--base hcld``: the bundle's own regime with its spectral calibration switched off), then filtered in the
frequency domain by a real gain per band (``--bins`` bands per axis), then histogram-matched again. Gains:

- ``ratio_site``: ``sqrt(P_target / P_source)`` with both site means over the training images (``--train``
  images, sites from ``--train-sites``, a participants.tsv; the source's site is known here, not in the
  product);
- ``ratio_own``: the same with the filtered image's own band powers;
- ``ratio_input``: the same with the band powers of the input mapped onto the target's histogram (what the
  product computes; the same as ``ratio_own`` on the ``histmatch`` base);
- ``wiener``: ``sqrt(S_target * S_own) / P_own`` with ``S = P - N``, ``N`` a white noise floor read off the
  highest-frequency corner bands (the lowest power among bands whose three indices are in the top quarter);
- ``wiener_excess``: only the source's noise beyond the target site's is treated as noise;
- ``oracle_pair`` (cannot be had by a product; paired data): per site pair the least-squares gain
  ``sum Re(Y X*) / sum |X|^2`` fitted on the ``--fit`` heads (the same heads at both sites), applied to the
  ``--eval`` heads;
- ``oracle_image``: the same fitted on the evaluated pair itself (the best any band gain can do).

Prints the mean SSIM (quality_simulated.image_metrics) per gain, by source and by target site; ``--out``
writes one row per pair.

    PYTHONPATH=$PWD python benchmarks/spectral_filters.py --inputs HELDOUT_INPUTS --train TRAIN_INPUTS \\
        --train-sites DATA/ixi/train/participants.tsv --eval IXI633 IXI168 IXI632 IXI216 \\
        --fit IXI263 IXI173 IXI280 IXI516 [--base hcld --bundle BUNDLE] [--bins 8] [--out ROWS.tsv]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_simulated as qs  # noqa: E402

from hcld_bids.model.spectrum import band_index, band_power  # noqa: E402

GAINS = ("ratio_site", "ratio_own", "ratio_input", "wiener", "wiener_excess", "oracle_pair", "oracle_image")


def apply_gain(vol, mask, gain, bins):
    spec = np.fft.rfftn(np.where(mask, vol, 0.0))
    spec *= gain[band_index(vol.shape, bins)].reshape(spec.shape)
    return np.where(mask, np.fft.irfftn(spec, s=vol.shape, axes=(0, 1, 2)), 0.0).astype(np.float32)


def cross_power(y, x, bins):
    """Per band ``sum Re(Y X*)`` and ``sum |X|^2`` (unnormalised)."""
    idx = band_index(x.shape, bins)
    fx, fy = np.fft.rfftn(x), np.fft.rfftn(y)
    return (np.bincount(idx, (fy * np.conj(fx)).real.ravel(), minlength=bins ** 3),
            np.bincount(idx, (np.abs(fx) ** 2).ravel(), minlength=bins ** 3))


def noise_floor(power, bins):
    top = np.arange(bins) >= bins - max(1, bins // 4)
    corner = (top[:, None, None] & top[None, :, None] & top[None, None, :]).ravel()
    return float(power[corner].min())


def load_train(inputs: Path, participants: Path) -> dict:
    import nibabel as nib

    site_of = {r["participant_id"]: r["site"] for r in csv.DictReader(open(participants), delimiter="\t")}
    out = {}
    for path in sorted(Path(inputs).glob("sub-*_t1w.nii.gz")):
        sub = path.name.split("_")[0]
        if sub not in site_of:
            continue
        mask = np.asarray(nib.load(str(path).replace("_t1w", "_mask")).dataobj) > 0
        out.setdefault(site_of[sub], []).append((np.asarray(nib.load(path).dataobj, np.float32), mask))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=Path, required=True, help="traveling heads (model-grid images)")
    ap.add_argument("--train", type=Path, required=True, help="training images (one site per head)")
    ap.add_argument("--train-sites", type=Path, required=True, help="participants.tsv with a site column")
    ap.add_argument("--eval", nargs="+", required=True, help="heads to score")
    ap.add_argument("--fit", nargs="+", required=True, help="heads the paired oracle is fitted on")
    ap.add_argument("--base", choices=["histmatch", "hcld"], default="histmatch")
    ap.add_argument("--bundle", type=Path, default=qs.DEMO_BUNDLE)
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    held = qs.load_inputs(args.inputs)
    train = load_train(args.train, args.train_sites)
    sites = sorted(train)
    edges = qs.metrics.histogram_edges()
    hist = {s: np.mean([qs.metrics.brain_histogram(v, m)[1] for v, m in train[s]], axis=0) for s in sites}
    hm = {s: (lambda vol, mask, s=s: qs.histogram_match(vol, mask, edges, hist[s])) for s in sites}
    site_power = {(s, t): np.mean([band_power(hm[t](v, m), m, args.bins) for v, m in train[s]], axis=0)
                  for s, t in itertools.product(sites, sites)}
    target_power = {t: np.mean([band_power(v, m, args.bins) for v, m in train[t]], axis=0) for t in sites}
    harmonizer = None
    if args.base == "hcld":
        from hcld_bids.model import Harmonizer, load_bundle

        harmonizer = Harmonizer(load_bundle(args.bundle))
        regime = harmonizer.resolve_regime(spectrum=0.0)

    def base(sub, s, t):
        vol, mask = held[sub][s]
        if harmonizer is None:
            return hm[t](vol, mask)
        out = harmonizer.harmonize(vol, harmonizer.style_from_site(t), regime=regime, mask=mask)
        return hm[t](out, mask)

    pairs = [(s, t) for s, t in itertools.product(sites, sites) if s != t]
    fitted = {}
    for s, t in pairs:
        num = den = 0.0
        for sub in args.fit:
            mask = held[sub][s][1]
            c, p = cross_power(np.where(mask & held[sub][t][1], held[sub][t][0], 0), base(sub, s, t), args.bins)
            num, den = num + c, den + p
        fitted[(s, t)] = num / np.maximum(den, 1e-12)
    rows = []
    for sub in args.eval:
        for s, t in pairs:
            vol, mask = held[sub][s]
            ref, ref_mask = held[sub][t]
            b = base(sub, s, t)
            p_own, p_t = band_power(b, mask, args.bins), target_power[t]
            n_own, n_t = noise_floor(p_own, args.bins), noise_floor(p_t, args.bins)
            s_own, s_t = np.clip(p_own - n_own, 0, None), np.clip(p_t - n_t, 0, None)
            excess = max(n_own - n_t, 0.0)
            c, p = cross_power(np.where(mask & ref_mask, ref, 0), b, args.bins)
            target_hist = {"edges": edges, "density": hist[t]}

            def ssim(out):
                return qs.image_metrics(out, ref, ref_mask, vol, mask, target_hist)["ssim"]

            gains = {
                "ratio_site": np.sqrt(site_power[(t, t)] / np.maximum(site_power[(s, t)], 1e-12)),
                "ratio_own": np.sqrt(p_t / np.maximum(p_own, 1e-12)),
                "ratio_input": np.sqrt(p_t / np.maximum(band_power(hm[t](vol, mask), mask, args.bins), 1e-12)),
                "wiener": np.sqrt(s_t * s_own) / np.maximum(p_own, 1e-12),
                "wiener_excess": np.sqrt(np.clip(p_t - excess, 0, None) * np.clip(p_own - excess, 0, None))
                / np.maximum(p_own, 1e-12),
                "oracle_pair": fitted[(s, t)],
                "oracle_image": c / np.maximum(p, 1e-12),
            }
            row = {"subject": sub, "source": s, "target": t, args.base: ssim(b)}
            for name, gain in gains.items():
                gain = np.asarray(gain, float).copy()
                gain[0] = 1.0  # the mean is the histogram's business
                out = hm[t](apply_gain(b, mask, gain, args.bins), mask)
                row[name] = ssim(out)
            rows.append(row)
            print(f"  {sub} {s} -> {t}  " + "  ".join(f"{k} {row[k]:.3f}" for k in (args.base,) + GAINS), flush=True)
    methods = (args.base,) + GAINS
    header = "| | " + " | ".join(methods) + " |"
    print("\nmean SSIM to the same head at the target site\n\n" + header + "\n|" + " --- |" * (len(methods) + 1))
    groups = [("all", rows)] + [(f"from {s}", [r for r in rows if r["source"] == s]) for s in sites] \
        + [(f"to {t}", [r for r in rows if r["target"] == t]) for t in sites]
    for name, group in groups:
        print(f"| {name} | " + " | ".join(f"{np.mean([r[m] for r in group]):.4f}" for m in methods) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
