#!/usr/bin/env python
"""Harmonization quality on simulated traveling subjects: HCLD against histogram matching and Nyul.

Material: model-grid images (80x96x80, 2 mm, intensities in [0, 1]) of held-out heads, each seen at every
simulated site, named ``sub-<s>_ses-<site>_{t1w,mask}.nii.gz`` in ``--inputs`` (what the train level's
preprocessing exports to ``WORK/train/inputs``). The same head at the target site is the ground truth.

For every ordered (source, target) pair of sites and every subject, the source image is mapped toward the
target site by

- ``input``: nothing (the unharmonized image);
- ``histmatch``: per-site histogram matching: the brain intensities are mapped by quantiles onto the target
  site's training histogram stored in the bundle manifest (``sites.<site>.intensity_histogram``);
- ``histmatch_spectrum`` (when the bundle stores the sites' power spectra): the spectral calibration of
  :mod:`hcld_bids.model.spectrum` onto the target site's stored spectrum (exponent 1; the gain measured on
  the histogram-matched image), then histogram matching as above: the two calibrations of the Harmonizer without any network;
- ``nyul``: Nyul & Udupa piecewise-linear landmark normalization (landmarks: brain percentiles 1, 10, 20,
  ..., 90, 99). The standard scale must come from target-site images, and the bundle holds no training
  images, so it is fitted **leave one subject out**: the mean landmarks of the target site's images of the
  *other* held-out subjects (in the target site's own [0, 1] units, so no output range is imposed). With
  ``--nyul-fit bundle`` (or when only one subject is evaluated) the standard landmarks are the quantiles
  of the bundle's target-site histogram instead. Intensities beyond the end landmarks follow the slope of
  the end segments; the result is clipped to [0, 1]. Implemented here in numpy rather than with the
  ``intensity-normalization`` package (3.0.1 installs offline, its only extra dependency is scikit-fuzzy):
  its ``NyulNormalizer`` rescales every image to a fixed output range (1..100) before averaging the
  landmarks, while the comparison with the same head at the target site needs the standard scale in the
  target site's intensity units; the method is some thirty lines and adding a runtime dependency for it
  was not worth it;
- ``hcld``: :class:`hcld_bids.model.harmonize.Harmonizer` toward the site's prototype under the bundle's own
  inference regime (its manifest's ``inference`` block: what the participant level runs), with
  ``--inversion-steps`` / ``--sampling-steps`` overriding its DDIM steps when given; output masked to the
  brain;
- ``hcld_t<N>`` (one per ``--t-end N``): the same with the inversion stopped at timestep N and the sampling
  started there (``Harmonizer.harmonize(t_end=N)``; the default runs to the last training timestep, 999);
- ``latent_adain`` (with ``--latent-adain``; an ablation): HCLD without the diffusion model, the decoded
  latent fusion only: ``Dec(AdaIN(E(x), prototype statistics))``, clipped to [0, 1] and masked like HCLD;
- ``recon`` (with ``--chain``): the autoencoder's plain reconstruction ``Dec(E(x))``, the ceiling of any
  output that is decoded without detail re-injection;
- one method per ``--regime NAME=KIND[,key=value...]``: the Harmonizer with that
  :class:`hcld_bids.model.harmonize.Regime` (keys: strength, inversion_steps, sampling_steps, detail,
  calibrate, reference_calibration, spectrum, z0_clip, readapt_condition, guidance, guidance_source), e.g. ``sdedit30=sdedit,strength=0.3,sampling_steps=1``;
- ``--chain`` adds the loss budget of a bundle, in the order the path loses or gains: ``recon``,
  ``latent_adain``, then the regimes of :data:`CHAIN` without post-processing: ``full`` (full inversion,
  30 + 10 steps), ``research`` (the research code's mismatched schedule), ``dual10`` (DDIB, strength 0.1),
  ``sdedit02`` ... ``sdedit20`` (one sampling step at strength 0.02 to 0.2) and ``sdedit05_5steps``; and the
  bundle's own regime (``hcld``) without its detail re-injection and/or its calibration.

Per pair (inside the brain = both brain masks): SSIM (3D, Gaussian window sigma 1.5 voxels, averaged over
the brain), PSNR and MAE, Wasserstein-1 distance between the brain-intensity histograms of the output and
of the same head at the target site (``w1_same_head``) and of the output and the target site's stored
histogram (``w1_site``), and structure preservation between input and output (hcld_bids.reports.metrics).

Site separability: for a fixed target T, every image of every site (T's own images too, mapped toward T by
the same method) forms the method's output set. Features: the brain-intensity histogram (48 bins on
[0, 1]) and the 5/25/50/75/95th brain percentiles; a multinomial logistic regression (scikit-learn) is
scored by cross-validated accuracy with GroupKFold over subjects (every fold holds out whole heads). Chance is
1 / number of sites. Lower accuracy: sites harder to tell apart. The features are standardized with the mean
and SD of the *unharmonized* images of the same target block (``classifier_accuracy``), so a difference
counts in units of the real between-image differences; fitted to each method's own outputs instead
(``classifier_accuracy_own_scale``, the measure of earlier tables), the scaler blows up differences of 1e-5
between the sources of any histogram-calibrated output to unit variance, and the classifier then fits them.

Writes ``pairs.tsv`` (one row per method and pair), ``classifier.tsv`` (one row per target and method),
``summary.tsv`` and ``summary.json`` under ``--out``, and prints the tables (markdown).

    PYTHONPATH=$PWD python benchmarks/quality_simulated.py --inputs WORK/train/inputs --out DIR \
        [--bundle hcld_bids/data/models/demo] [--targets siteA] [--subjects 8] [--device cpu] \
        [--inversion-steps 30] [--sampling-steps 10] [--t-end N ...] [--latent-adain] [--cache DIR] \
        [--participant-label IXI033 ...] [--chain] [--regime NAME=KIND,key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _tables import markdown_table  # noqa: E402

from hcld_bids.model.spectrum import match_spectrum  # noqa: E402
from hcld_bids.reports import metrics  # noqa: E402

DEMO_BUNDLE = REPO / "hcld_bids" / "data" / "models" / "demo"
METHODS = ("input", "histmatch", "nyul", "hcld")
METRIC_KEYS = ("ssim", "psnr", "mae", "w1_same_head", "w1_site", "structure_preservation")
#: Landmarks of the Nyul normalization (percentiles of the brain intensities).
NYUL_PERCENTILES = np.array([1.0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99])
#: Site-classifier features: histogram bins and percentiles of the brain intensities.
CLASSIFIER_BINS = 48
CLASSIFIER_PERCENTILES = (5, 25, 50, 75, 95)

_NAME = re.compile(r"sub-(?P<sub>[^_]+)_ses-(?P<site>[^_]+)_t1w\.nii\.gz$")


# ----------------------------------------------------------------------------------------------- inputs

def load_inputs(inputs: Path) -> dict:
    """``{subject: {site: (volume float32, brain mask bool)}}`` from ``sub-<s>_ses-<site>_{t1w,mask}.nii.gz``,
    or from a pack of scripts/demo_model/pack_inputs.py (a folder with ``inputs.npz``; no nibabel needed)."""
    images = defaultdict(dict)
    if (Path(inputs) / "inputs.npz").is_file():
        sys.path.insert(0, str(REPO / "scripts" / "demo_model"))
        from train_demo import load_pack

        volumes, masks, _, labels = load_pack(Path(inputs))
        for vol, mask, label in zip(volumes, masks, labels):
            m = re.match(r"sub-(?P<sub>[^_]+)_ses-(?P<site>[^_]+)$", label)
            if m:
                images[m["sub"]][m["site"]] = (vol, mask)
        return dict(images)
    import nibabel as nib

    for path in sorted(Path(inputs).glob("*_t1w.nii.gz")):
        m = _NAME.match(path.name)
        if not m:
            continue
        mask = path.with_name(path.name.replace("_t1w.nii.gz", "_mask.nii.gz"))
        images[m["sub"]][m["site"]] = (np.asarray(nib.load(path).dataobj, dtype=np.float32),
                                       np.asarray(nib.load(mask).dataobj) > 0)
    return dict(images)


# ----------------------------------------------------------------------------------------------- baselines

def histogram_match(vol, mask, edges, density):
    """Map the brain intensities of ``vol`` onto the distribution ``density`` (on ``edges``) by quantiles;
    zero outside the brain (the Harmonizer's calibration step, :func:`hcld_bids.model.harmonize.match_histogram`)."""
    from hcld_bids.model.harmonize import match_histogram

    out = match_histogram(vol, mask, edges, density)
    out[~np.asarray(mask, bool)] = 0.0
    return out


def nyul_landmarks(values) -> np.ndarray:
    """Nyul landmarks (brain percentiles :data:`NYUL_PERCENTILES`) of a sample of intensities."""
    return np.percentile(np.asarray(values, dtype=np.float64), NYUL_PERCENTILES)


def nyul_landmarks_from_histogram(edges, density) -> np.ndarray:
    """The same landmarks read off a histogram density (inverse of its piecewise-linear CDF)."""
    edges, density = np.asarray(edges, float), np.asarray(density, float)
    cdf = np.concatenate([[0.0], np.cumsum(density * np.diff(edges))])
    cdf /= cdf[-1]
    keep = np.concatenate([[True], np.diff(cdf) > 0])  # drop empty bins so that the CDF is invertible
    return np.interp(NYUL_PERCENTILES / 100.0, cdf[keep], edges[keep])


def _increasing(x: np.ndarray) -> np.ndarray:
    """Make landmarks strictly increasing (ties occur in images clipped at 0 or 1)."""
    x = np.maximum.accumulate(np.asarray(x, dtype=np.float64))
    return x + np.arange(x.size) * 1e-6


def nyul_map(vol, mask, standard) -> np.ndarray:
    """Piecewise-linear map of ``vol``'s brain landmarks onto ``standard``; linear beyond the end landmarks,
    clipped to [0, 1], zero outside the brain (like the other brain-only outputs)."""
    src = _increasing(nyul_landmarks(vol[mask]))
    dst = np.asarray(standard, dtype=np.float64)
    values = vol[mask].astype(np.float64)
    mapped = np.interp(values, src, dst)
    low, high = values < src[0], values > src[-1]
    mapped[low] = dst[0] + (values[low] - src[0]) * (dst[1] - dst[0]) / (src[1] - src[0])
    mapped[high] = dst[-1] + (values[high] - src[-1]) * (dst[-1] - dst[-2]) / (src[-1] - src[-2])
    out = np.zeros_like(vol)
    out[mask] = np.clip(mapped, 0.0, 1.0)
    return out


# ----------------------------------------------------------------------------------------------- metrics

def brain_ssim(out, ref, ref_mask, inp_mask) -> float:
    """SSIM of ``out`` against the same head ``ref``, averaged over both brains (the tables' SSIM)."""
    from skimage.metrics import structural_similarity

    brain = ref_mask & inp_mask
    _, ssim_map = structural_similarity(ref * brain, out * brain, data_range=1.0, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False, full=True)
    return float(ssim_map[brain].mean())


def image_metrics(out, ref, ref_mask, inp, inp_mask, target_hist, voxel_size_mm: float = 2.0) -> dict:
    """SSIM/PSNR/MAE of ``out`` against the same head ``ref`` in both brains; W1 to that head and to the site."""
    brain = ref_mask & inp_mask
    diff = out[brain] - ref[brain]
    mse = float(np.mean(diff ** 2))
    edges = metrics.histogram_edges()
    _, h_out = metrics.brain_histogram(out, inp_mask)
    _, h_ref = metrics.brain_histogram(ref, ref_mask)
    return {
        "ssim": brain_ssim(out, ref, ref_mask, inp_mask),
        "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        "mae": float(np.mean(np.abs(diff))),
        "w1_same_head": metrics.wasserstein_1d(h_out, h_ref, edges),
        "w1_site": metrics.wasserstein_1d(
            h_out, metrics.rebin_density(target_hist["density"], target_hist["edges"], edges), edges),
        "structure_preservation": metrics.structure_preservation(inp, out, inp_mask, voxel_size_mm=voxel_size_mm),
    }


def classifier_features(vol, mask) -> np.ndarray:
    """Brain-intensity histogram (:data:`CLASSIFIER_BINS` bins, as probabilities) and percentiles."""
    values = np.clip(vol[mask].astype(np.float64), 0.0, 1.0)
    hist = np.bincount(np.minimum((values * CLASSIFIER_BINS).astype(int), CLASSIFIER_BINS - 1),
                       minlength=CLASSIFIER_BINS) / max(values.size, 1)
    return np.concatenate([hist, np.percentile(values, CLASSIFIER_PERCENTILES)])


def site_classifier_accuracy(features, sites, groups, seed: int = 0, scale=None) -> float:
    """Cross-validated accuracy of a logistic regression telling ``sites`` apart; GroupKFold over ``groups``
    (subjects), as many folds as subjects up to 8. ``scale``: a fixed ``(mean, sd)`` to standardize the
    features with (:func:`hcld_bids.reports.metrics.feature_scale` of the unharmonized images); without it, a StandardScaler fitted to
    ``features`` in each fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, g = np.asarray(features, dtype=np.float64), np.asarray(sites), np.asarray(groups)
    folds = min(len(set(g)), 8)
    if folds < 2:
        raise ValueError("the site classifier needs at least two subjects")
    classifier = LogisticRegression(C=1.0, max_iter=5000, random_state=seed)
    if scale is None:
        model = make_pipeline(StandardScaler(), classifier)
    else:
        model, X = classifier, (X - scale[0]) / scale[1]
    pred = cross_val_predict(model, X, y, groups=g, cv=GroupKFold(n_splits=folds))
    return float(np.mean(pred == y))


def summarize(rows, keys=METRIC_KEYS) -> dict:
    """Mean and SD of every metric per method (``rows``: dicts with ``method`` and the ``keys``)."""
    out = {}
    for method in [m for m in dict.fromkeys(r["method"] for r in rows)]:
        sel = [r for r in rows if r["method"] == method]
        out[method] = {k: {"mean": round(float(np.mean([r[k] for r in sel])), 4),
                           "sd": round(float(np.std([r[k] for r in sel])), 4)} for k in keys if k in sel[0]}
        out[method]["n"] = len(sel)
    return out


def write_tsv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


# ----------------------------------------------------------------------------------------------- main

def _hcld_output(harmonizer, cache: Path | None, key: str, inp, mask, style, args, t_end: int | None = None):
    regime = harmonizer.resolve_regime(inversion_steps=args.inversion_steps, sampling_steps=args.sampling_steps)
    stamp = json.dumps({**regime.to_dict(), "t_end": t_end}, sort_keys=True)
    name = f"{key}_{regime.kind}_inv{regime.inversion_steps}_samp{regime.sampling_steps}" \
        + (f"_tend{t_end}" if t_end else "")
    path = cache / f"{name}.npy" if cache else None
    if path is not None and path.is_file() and (not path.with_suffix(".json").is_file()
                                                or path.with_suffix(".json").read_text() == stamp):
        return np.load(path), float("nan")
    t0 = time.perf_counter()
    out = harmonizer.harmonize(inp, style, inversion_steps=args.inversion_steps,
                               sampling_steps=args.sampling_steps, mask=mask, t_end=t_end)
    seconds = time.perf_counter() - t0
    if path is not None:
        np.save(path, out)
        path.with_suffix(".json").write_text(stamp)
    return out, seconds


#: The loss-budget chain of ``--chain``: regimes compared with the bundle's own (names and regime specs).
CHAIN = (
    ("full", "full,strength=1.0,inversion_steps=30,sampling_steps=10,detail=0,calibrate=false"),
    ("research", "research,detail=0,calibrate=false"),
    ("dual10", "dual,strength=0.1,inversion_steps=10,sampling_steps=10,detail=0,calibrate=false"),
    ("sdedit02", "sdedit,strength=0.02,sampling_steps=1,detail=0,calibrate=false"),
    ("sdedit05", "sdedit,strength=0.05,sampling_steps=1,detail=0,calibrate=false"),
    ("sdedit10", "sdedit,strength=0.1,sampling_steps=1,detail=0,calibrate=false"),
    ("sdedit20", "sdedit,strength=0.2,sampling_steps=1,detail=0,calibrate=false"),
    ("sdedit05_5steps", "sdedit,strength=0.05,sampling_steps=5,detail=0,calibrate=false"),
)


def chain_ablations(default) -> dict:
    """The bundle's own regime without each of its post-processing steps (``hcld`` is the regime itself)."""
    from dataclasses import replace

    out = {}
    if default.detail:
        out["hcld_nodetail"] = replace(default, detail=0.0)
    if default.calibrate:
        out["hcld_nocalibration"] = replace(default, calibrate=False)
    if default.detail and default.calibrate:
        out["hcld_plain"] = replace(default, detail=0.0, calibrate=False)
    return out


def parse_regime(spec: str, base):
    """``KIND[,key=value...]`` -> a Regime (``base``'s fields for keys not given)."""
    from dataclasses import fields, replace

    parts = [p for p in spec.split(",") if p]
    kind, changes = parts[0], {}
    types = {f.name: f.type for f in fields(base)}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key not in types:
            raise ValueError(f"unknown regime key {key!r} in {spec!r}; known: {', '.join(sorted(types))}")
        if value.lower() in ("true", "false"):
            changes[key] = value.lower() == "true"
        elif value.lower() == "none":
            changes[key] = None
        elif key in ("inversion_steps", "sampling_steps"):
            changes[key] = int(value)
        elif isinstance(getattr(base, key), str):
            changes[key] = value
        else:
            changes[key] = float(value)
    return replace(base, kind=kind, **changes)


def regime_output(harmonizer, cache: Path | None, key: str, inp, mask, style, regime, name: str):
    """One Harmonizer output under ``regime`` (cached as ``<key>_<name>.npy`` with the regime in a sidecar)."""
    path = cache / f"{key}_{name}.npy" if cache else None
    stamp = json.dumps(regime.to_dict(), sort_keys=True)
    if path is not None and path.is_file() and path.with_suffix(".json").is_file() \
            and path.with_suffix(".json").read_text() == stamp:
        return np.load(path), float("nan")
    t0 = time.perf_counter()
    out = harmonizer.harmonize(inp, style, regime=regime, mask=mask)
    seconds = time.perf_counter() - t0
    if path is not None:
        np.save(path, out)
        path.with_suffix(".json").write_text(stamp)
    return out, seconds


def reconstruction_output(harmonizer, inp, mask) -> np.ndarray:
    """``recon``: the autoencoder's plain reconstruction ``Dec(E(x))``, clipped and masked."""
    out = harmonizer.decode(harmonizer.encode(harmonizer._to_device([inp]))).clamp(0.0, 1.0)[0, 0].cpu().numpy()
    out = out.astype(np.float32)
    out[np.asarray(mask) <= 0] = 0.0
    return out


def latent_adain_output(harmonizer, inp, mask, style) -> np.ndarray:
    """The ablation ``latent_adain``: encode, AdaIN toward the style's channel statistics, decode."""
    import torch

    from hcld_bids.model.fusion import adain

    z = harmonizer.encode(harmonizer._to_device([inp]))
    with torch.inference_mode():
        fused = adain(z, (style.channel_mean, style.channel_std))
    out = harmonizer.decode(fused).clamp(0.0, 1.0)[0, 0].cpu().numpy().astype(np.float32)
    out[np.asarray(mask) <= 0] = 0.0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=Path, required=True, help="folder of sub-<s>_ses-<site>_{t1w,mask}.nii.gz")
    ap.add_argument("--out", type=Path, required=True, help="folder for the TSV and JSON files")
    ap.add_argument("--bundle", type=Path, default=DEMO_BUNDLE, help="model bundle (default: the demo model)")
    ap.add_argument("--targets", nargs="*", default=None, help="target sites (default: every site)")
    ap.add_argument("--subjects", type=int, default=None, help="use the first N subjects (sorted labels)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inversion-steps", type=int, default=None, help="override the bundle regime's DDIM steps")
    ap.add_argument("--sampling-steps", type=int, default=None, help="override the bundle regime's DDIM steps")
    ap.add_argument("--nyul-fit", choices=["loso", "bundle"], default="loso",
                    help="standard scale of Nyul: other subjects' target-site images (loso) or the bundle "
                         "histogram's quantiles")
    ap.add_argument("--t-end", type=int, nargs="+", default=[], metavar="N",
                    help="also evaluate HCLD with the inversion stopped at timestep N (method hcld_t<N>)")
    ap.add_argument("--latent-adain", action="store_true",
                    help="also evaluate the ablation latent_adain: decoded latent AdaIN, no diffusion")
    ap.add_argument("--cache", type=Path, help="keep HCLD outputs here as .npy and reuse them")
    ap.add_argument("--voxel-size-mm", type=float, default=2.0,
                    help="voxel size of the inputs, for structure preservation (default: the 2 mm model grid)")
    ap.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                    help="use these subjects (default: all, or the first --subjects)")
    ap.add_argument("--chain", action="store_true",
                    help="the loss budget: recon, latent_adain, each inference regime and the bundle's own (final)")
    ap.add_argument("--regime", nargs="+", default=[], metavar="NAME=KIND[,key=value]",
                    help="also evaluate the Harmonizer under these regimes (method NAME)")
    args = ap.parse_args(argv)

    import torch

    from hcld_bids.model.bundle import load_bundle
    from hcld_bids.model.harmonize import Harmonizer

    start = time.perf_counter()
    images = load_inputs(args.inputs)
    if not images:
        ap.error(f"no sub-<s>_ses-<site>_t1w.nii.gz images in {args.inputs}")
    subjects = sorted(images)[: args.subjects] if args.subjects else sorted(images)
    if args.participant_label:
        wanted = [p.removeprefix("sub-") for p in args.participant_label]
        unknown = [p for p in wanted if p not in images]
        if unknown:
            ap.error(f"subjects {unknown} have no images in {args.inputs}")
        subjects = sorted(wanted)
    sites = sorted({s for sub in subjects for s in images[sub]})
    incomplete = [sub for sub in subjects if set(images[sub]) != set(sites)]
    if incomplete:
        ap.error(f"subjects {incomplete} are not seen at every site {sites}")
    targets = args.targets or sites
    bundle = load_bundle(args.bundle, device=args.device)
    missing = [t for t in targets if t not in sites or t not in bundle.manifest.get("sites", {})]
    if missing:
        ap.error(f"targets {missing} are not sites of both the inputs ({sites}) and the bundle")
    nyul_fit = args.nyul_fit if len(subjects) > 1 else "bundle"
    harmonizer = Harmonizer(bundle, device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    own = harmonizer.resolve_regime(inversion_steps=args.inversion_steps, sampling_steps=args.sampling_steps)
    print(f"{len(subjects)} subjects x {len(sites)} sites, targets {', '.join(targets)}; bundle {args.bundle.name}; "
          f"HCLD {own} on {args.device} ({torch.get_num_threads()} threads); Nyul standard scale: {nyul_fit}",
          flush=True)

    regimes = {}
    for item in list(CHAIN if args.chain else ()) + [tuple(r.split("=", 1)) for r in args.regime]:
        if len(item) != 2:
            ap.error(f"--regime takes NAME=KIND[,key=value...], got {item[0]!r}")
        try:
            regimes[item[0]] = parse_regime(item[1], harmonizer.default_regime)
        except ValueError as err:
            ap.error(str(err))
    if args.chain:
        regimes.update(chain_ablations(harmonizer.default_regime))
    spectra = {t: bundle.manifest["sites"][t].get("power_spectrum") for t in targets}
    with_spectrum = all(v is not None for v in spectra.values())
    methods = METHODS + (("histmatch_spectrum",) if with_spectrum else ()) \
        + tuple(f"hcld_t{t}" for t in args.t_end) + (("recon",) if args.chain else ()) \
        + (("latent_adain",) if (args.latent_adain or args.chain) else ()) + tuple(regimes)
    pair_rows, clf_rows, hcld_seconds = [], [], []
    for target in targets:
        style = harmonizer.style_from_site(target)
        hist = bundle.manifest["sites"][target]["intensity_histogram"]
        if nyul_fit == "bundle":
            standards = {sub: nyul_landmarks_from_histogram(hist["edges"], hist["density"]) for sub in subjects}
        else:
            marks = {sub: nyul_landmarks(images[sub][target][0][images[sub][target][1]]) for sub in subjects}
            standards = {sub: np.mean([marks[o] for o in subjects if o != sub], axis=0) for sub in subjects}
        features = {m: [] for m in methods}
        labels, groups = [], []
        for sub in subjects:
            ref, ref_mask = images[sub][target]
            for source in sites:
                inp, mask = images[sub][source]
                hcld, seconds = _hcld_output(harmonizer, args.cache, f"{sub}_{source}_to_{target}", inp, mask,
                                             style, args)
                if not math.isnan(seconds):
                    hcld_seconds.append(seconds)
                outputs = {"input": inp, "histmatch": histogram_match(inp, mask, hist["edges"], hist["density"]),
                           "nyul": nyul_map(inp, mask, standards[sub]), "hcld": hcld}
                if with_spectrum:
                    outputs["histmatch_spectrum"] = histogram_match(
                        match_spectrum(inp, mask, spectra[target], measure=outputs["histmatch"]), mask,
                        hist["edges"], hist["density"])
                for t_end in args.t_end:
                    outputs[f"hcld_t{t_end}"], seconds_t = _hcld_output(
                        harmonizer, args.cache, f"{sub}_{source}_to_{target}", inp, mask, style, args, t_end)
                    if not math.isnan(seconds_t):
                        hcld_seconds.append(seconds_t)
                if args.chain:
                    outputs["recon"] = reconstruction_output(harmonizer, inp, mask)
                if args.latent_adain or args.chain:
                    outputs["latent_adain"] = latent_adain_output(harmonizer, inp, mask, style)
                for name, regime in regimes.items():
                    outputs[name], seconds_r = regime_output(harmonizer, args.cache, f"{sub}_{source}_to_{target}",
                                                             inp, mask, style, regime, name)
                    if not math.isnan(seconds_r):
                        hcld_seconds.append(seconds_r)
                for method, image in outputs.items():
                    features[method].append(classifier_features(image, mask))
                labels.append(source)
                groups.append(sub)
                if source == target:
                    continue
                scores = {}
                for method, image in outputs.items():
                    row = {"method": method, "subject": sub, "source": source, "target": target,
                           **image_metrics(image, ref, ref_mask, inp, mask, hist, args.voxel_size_mm)}
                    pair_rows.append(row)
                    scores[method] = row["ssim"]
                print(f"  {sub} {source} -> {target}  SSIM " + "  ".join(f"{m} {v:.3f}" for m, v in scores.items())
                      + (f"  (HCLD {seconds:.1f} s)" if not math.isnan(seconds) else "  (HCLD cached)"), flush=True)
        scale = metrics.feature_scale(features["input"])
        for method in methods:  # one subject cannot be cross-validated by subject: no classifier figure then
            acc, own = (site_classifier_accuracy(features[method], labels, groups, scale=scale),
                        site_classifier_accuracy(features[method], labels, groups)) if len(subjects) > 1 \
                else (float("nan"), float("nan"))
            clf_rows.append({"target": target, "method": method, "n_images": len(labels), "n_sites": len(sites),
                             "accuracy": acc, "accuracy_own_scale": own, "chance": 1.0 / len(sites)})

    write_tsv(args.out / "pairs.tsv", pair_rows)
    write_tsv(args.out / "classifier.tsv", clf_rows)
    summary = summarize(pair_rows)
    summary_rows = []
    for method in methods:
        for key in ("accuracy", "accuracy_own_scale"):
            accs = [r[key] for r in clf_rows if r["method"] == method]
            summary[method][f"classifier_{key}"] = round(float(np.mean(accs)), 4)
        summary_rows.append({"method": method, "n_pairs": summary[method]["n"],
                             **{f"{k}_{s}": summary[method][k][s] for k in METRIC_KEYS for s in ("mean", "sd")},
                             "classifier_accuracy": summary[method]["classifier_accuracy"],
                             "classifier_accuracy_own_scale": summary[method]["classifier_accuracy_own_scale"],
                             "chance": 1.0 / len(sites)})
    write_tsv(args.out / "summary.tsv", summary_rows)
    per_target = {t: summarize([r for r in pair_rows if r["target"] == t]) for t in targets}
    result = {
        "description": __doc__.splitlines()[0], "inputs": str(args.inputs), "bundle": str(args.bundle),
        "subjects": subjects, "sites": sites, "targets": targets, "device": args.device,
        "inversion_steps": args.inversion_steps, "sampling_steps": args.sampling_steps, "t_end": args.t_end,
        "latent_adain": args.latent_adain,
        "regimes": {name: regime.to_dict() for name, regime in regimes.items()},
        "hcld_regime": harmonizer.resolve_regime(inversion_steps=args.inversion_steps,
                                                 sampling_steps=args.sampling_steps).to_dict(),
        "nyul_fit": nyul_fit,
        "chance": 1.0 / len(sites), "summary": summary, "per_target": per_target, "classifier": clf_rows,
        "hcld_seconds_mean": round(float(np.mean(hcld_seconds)), 2) if hcld_seconds else None,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))

    print(f"\n{len(pair_rows) // len(methods)} source->target pairs ({len(subjects)} subjects, targets "
          f"{', '.join(targets)}); site classifier: {len(sites)} sites, chance {1 / len(sites):.3f}\n")
    print(markdown_table(
        ["method", "SSIM", "PSNR (dB)", "MAE", "W1 to same head", "W1 to target site", "structure preservation",
         "site-classifier accuracy", "same, features scaled on the outputs (earlier tables)"],
        ([row["method"], f"{row['ssim_mean']:.3f} ± {row['ssim_sd']:.3f}", f"{row['psnr_mean']:.1f}",
          f"{row['mae_mean']:.3f}", f"{row['w1_same_head_mean']:.4f}", f"{row['w1_site_mean']:.4f}",
          f"{row['structure_preservation_mean']:.3f}", f"{row['classifier_accuracy']:.3f}",
          f"{row['classifier_accuracy_own_scale']:.3f}"] for row in summary_rows)))
    print("\nper target (mean SSIM / W1 to same head; classifier accuracy):\n")

    def cell(t, m):
        acc = next(r["accuracy"] for r in clf_rows if r["target"] == t and r["method"] == m)
        s = per_target[t][m]
        return f"{s['ssim']['mean']:.3f} / {s['w1_same_head']['mean']:.4f}; {acc:.2f}"

    print(markdown_table(["target", *methods], ([t, *(cell(t, m) for m in methods)] for t in targets)))
    if hcld_seconds:
        print(f"\nHCLD: {np.mean(hcld_seconds):.1f} s per image on average ({len(hcld_seconds)} images)")
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
