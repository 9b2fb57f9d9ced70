#!/usr/bin/env python
"""How much of the input's lost detail to add back: SSIM to the same head against the detail gain, per site pair.

For every held-out head and ordered pair of sites (source -> target) the source image is encoded, its latent
AdaIN-fused to the target site's prototype and decoded (``a``); the detail the autoencoder loses is the input
minus its own reconstruction (``r = x - D(E(x))``). The candidate outputs are ``a + g * r`` for each gain ``g``
(and ``a`` plus the detail smoothed by a Gaussian of ``--smooth`` voxels, and with ``--wiener K`` ``a`` plus
each gain times the detail filtered by a local Wiener filter of K^3 voxels, ``scipy.signal.wiener`` with its
own noise estimate), clipped to [0, 1], with the brain
histogram calibrated onto the target site's stored histogram, exactly as
:class:`hcld_bids.model.harmonize.Harmonizer` does for the ``adain`` regime. Each is compared inside the brain
with the same head at the target site (SSIM as in ``quality_simulated.py``), beside the input and histogram
matching. The autoencoder runs once per image, so the whole gain sweep costs little more than one regime.

Inputs: a folder of ``sub-<s>_ses-<site>_t1w.nii.gz`` / ``_mask.nii.gz`` images on the model grid (as for
``quality_simulated.py``). Prints one row per site pair and the mean, and writes them as TSV with ``--out``.

    PYTHONPATH=$PWD python benchmarks/detail_gain.py --inputs VAL_INPUTS --bundle BUNDLE [--out gains.tsv]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_simulated import load_inputs  # noqa: E402

DEMO_BUNDLE = REPO / "hcld_bids" / "data" / "models" / "demo"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, default=DEMO_BUNDLE)
    ap.add_argument("--gains", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--smooth", type=float, default=0.7, help="sigma (voxels) of the smoothed-detail variant; 0: none")
    ap.add_argument("--wiener", type=int, nargs="+", default=[], metavar="K",
                    help="also the detail Wiener-filtered in K^3 windows, at every gain")
    ap.add_argument("--participant-label", nargs="+", default=None)
    ap.add_argument("--out", type=Path, help="TSV of the table")
    args = ap.parse_args(argv)

    import torch
    from scipy import ndimage as ndi
    from scipy.signal import wiener

    from hcld_bids.model.bundle import load_bundle
    from hcld_bids.model.evaluation import masked_ssim
    from hcld_bids.model.fusion import adain
    from hcld_bids.model.harmonize import Harmonizer, match_histogram

    start = time.perf_counter()
    images = load_inputs(args.inputs)
    subjects = sorted(p.removeprefix("sub-") for p in args.participant_label) if args.participant_label \
        else sorted(images)
    sites = sorted(images[subjects[0]])
    harmonizer = Harmonizer(load_bundle(args.bundle, device="cpu"), device="cpu")
    parts = {}
    with torch.inference_mode():
        for sub in subjects:
            for site in sites:
                vol, _ = images[sub][site]
                z = harmonizer.encode(harmonizer._to_device([vol]))
                parts[(sub, site)] = (z, vol - harmonizer.decode(z)[0, 0].cpu().numpy())
    methods = ["input", "histmatch", *[f"g{g:g}" for g in args.gains]] + ([f"smoothed{args.smooth:g}"]
                                                                           if args.smooth else [])
    methods += [f"wiener{k}_g{g:g}" for k in args.wiener for g in args.gains]
    scores = {}
    for target in sites:
        style = harmonizer.style_from_site(target)
        for sub in subjects:
            ref, ref_mask = images[sub][target]
            for source in sites:
                if source == target:
                    continue
                inp, mask = images[sub][source]
                brain = ref_mask & mask
                z, detail = parts[(sub, source)]
                with torch.inference_mode():
                    fused = harmonizer.decode(adain(z, (style.channel_mean, style.channel_std)))[0, 0].cpu().numpy()
                outs = {"input": inp, "histmatch": match_histogram(inp, mask, *style.histogram)}
                for g in args.gains:
                    outs[f"g{g:g}"] = match_histogram(np.clip(fused + g * detail, 0, 1), mask, *style.histogram)
                for k in args.wiener:
                    filtered = wiener(detail, k)
                    for g in args.gains:
                        outs[f"wiener{k}_g{g:g}"] = match_histogram(np.clip(fused + g * filtered, 0, 1), mask,
                                                                    *style.histogram)
                if args.smooth:
                    outs[f"smoothed{args.smooth:g}"] = match_histogram(
                        np.clip(fused + ndi.gaussian_filter(detail, args.smooth), 0, 1), mask, *style.histogram)
                for name, out in outs.items():
                    scores.setdefault((source, target, name), []).append(
                        masked_ssim((out * mask) * brain, ref, brain))
    pairs = list(itertools.permutations(sites, 2))
    rows = [[f"{s} -> {t}", *[float(np.mean(scores[(s, t, m)])) for m in methods]] for s, t in pairs]
    rows.append(["mean", *[float(np.mean([r[i + 1] for r in rows])) for i in range(len(methods))]])
    best = float(np.mean([max(np.mean(scores[(s, t, m)]) for m in methods[2:]) for s, t in pairs]))
    print(f"{len(subjects)} subjects x {len(sites)} sites; bundle {args.bundle}; SSIM to the same head")
    print("| source -> target | " + " | ".join(methods) + " |")
    print("| --- " * (len(methods) + 1) + "|")
    for row in rows:
        print(f"| {row[0]} | " + " | ".join(f"{v:.3f}" for v in row[1:]) + " |")
    print(f"best gain chosen per pair (needs the answer): {best:.3f}; {time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            f.write("pair\t" + "\t".join(methods) + "\n")
            for row in rows:
                f.write(row[0] + "\t" + "\t".join(f"{v:.6g}" for v in row[1:]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
