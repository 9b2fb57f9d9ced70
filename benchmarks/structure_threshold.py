"""Measure the anatomy-preservation guard on real heads: honest contrast changes vs damaged images.

Material: the held-out traveling subjects written by ``scripts/make_ixi_sites.py`` (real IXI heads, each
seen at four simulated sites: contrast curve, bias field, blur, slice thickness, noise). Every image is
preprocessed like the participant level does it (ANTs N4, ANTs affine registration of the subject's
original scan to the MNI152NLin6Asym 2 mm template, applied to all its site images; template brain mask;
robust 0.5/99.5 percentile scaling to [0, 1]), cached as .npy in --work.

Cases (input -> output):

- honest: the same head at another simulated site (all ordered site pairs); the input's brain
  histogram-matched to another site, skull-stripped and blurred (FWHM 3 mm, like the reconstruction of
  an autoencoder fed brain-only images: the edge darkens toward the background); gamma and sigmoid
  remappings with noise; blur FWHM 4 mm; noise;
- damage: the whole image shifted by 2 or 4 mm; a smooth random warp of 2 or 4 mm; blur FWHM 8 mm; a
  16 mm-radius region blurred away; a 24 mm block moved by 4 mm; a dark 8 mm-radius blob in white
  matter; another person's head; a slab of the brain zeroed (crop failure).

Prints min / median / max of structure preservation (SP), worst 24 mm block and mask Dice per case.

    python benchmarks/structure_threshold.py [--sites ../ixi-sites/heldout] [--n 10] [--quick]

``--quick`` (for the tests) measures the two honest site cases on the siteA -> siteB pair only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hcld_bids.reports import metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SITES = ("siteA", "siteB", "siteC", "siteD")


def _default(path: str) -> Path:
    return (REPO / path).resolve()


def find_template_mask(explicit: str | None) -> Path:
    """The MNI152NLin6Asym 2 mm brain mask: --mask, the package's TemplateFlow copy, or TEMPLATEFLOW_HOME."""
    name = "tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"
    candidates = [Path(explicit)] if explicit else []
    candidates.append(REPO / "hcld_bids" / "data" / "templateflow" / name)
    home = os.environ.get("TEMPLATEFLOW_HOME", str(Path.home() / ".cache" / "templateflow"))
    candidates.append(Path(home) / name)
    for candidate in candidates:
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    sys.exit(f"no template brain mask found in {', '.join(map(str, candidates))}; pass --mask FILE")


def prepare(sites_dir: Path, template: Path, mask_file: Path, work: Path, n: int) -> list[str]:
    """Preprocess n subjects (cached); returns their labels."""
    import ants
    import nibabel as nib

    work.mkdir(parents=True, exist_ok=True)
    mask = np.asarray(nib.load(mask_file).dataobj) > 0
    np.save(work / "mask.npy", mask)
    subjects = sorted(p.name for p in sites_dir.glob("sub-*") if p.is_dir())[:n]
    if not subjects:
        sys.exit(f"no sub-* directories in {sites_dir}; run scripts/make_ixi_sites.py or pass --sites")
    fixed = ants.image_read(str(template))
    for subject in subjects:
        if all((work / f"{subject}_{site}.npy").is_file() for site in SITES):
            continue
        start = time.perf_counter()
        original = sites_dir / "derivatives" / "original" / subject / "anat" / f"{subject}_T1w.nii.gz"
        moving = ants.n4_bias_field_correction(ants.image_read(str(original)))
        registration = ants.registration(fixed=fixed, moving=moving, type_of_transform="Affine")
        for site in SITES:
            path = sites_dir / subject / f"ses-{site}" / "anat" / f"{subject}_ses-{site}_T1w.nii.gz"
            corrected = ants.n4_bias_field_correction(ants.image_read(str(path)))
            warped = ants.apply_transforms(fixed=fixed, moving=corrected,
                                           transformlist=registration["fwdtransforms"]).numpy()
            low, high = np.percentile(warped[mask], [0.5, 99.5])
            np.save(work / f"{subject}_{site}.npy", np.clip((warped - low) / (high - low), 0, 1).astype(np.float32))
        print(f"  prepared {subject} in {time.perf_counter() - start:.0f} s", flush=True)
    return subjects


def histogram_match(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Monotone remapping of the brain of ``source`` onto the brain intensities of ``target``."""
    out = source.copy()
    values = source[mask]
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    reference = np.sort(target[mask])
    out[mask] = reference[(ranks * (reference.size - 1) // max(values.size - 1, 1)).astype(int)]
    return out


def blur(x, fwhm_mm, voxel=2.0):
    return ndi.gaussian_filter(x, fwhm_mm / 2.3548 / voxel)


def shift(x, voxels):
    return ndi.shift(x, (0, voxels, 0), order=1)


def warp(x, amplitude_vox, seed):
    rng = np.random.default_rng(seed)
    fields = [ndi.gaussian_filter(rng.standard_normal(x.shape), 8) for _ in range(3)]
    fields = [f / np.abs(f).max() * amplitude_vox for f in fields]
    grid = np.indices(x.shape, dtype=np.float32)
    return ndi.map_coordinates(x, [g + f for g, f in zip(grid, fields)], order=1)


CENTRE = np.array([45, 55, 45])  # voxel near the MNI origin: basal ganglia and ventricles


def _ball(shape, centre, radius_vox):
    return np.linalg.norm(np.indices(shape) - np.asarray(centre)[:, None, None, None], axis=0) < radius_vox


def blur_region(x):
    out = x.copy()
    inside = _ball(x.shape, CENTRE, 8)
    out[inside] = ndi.gaussian_filter(x, 3)[inside]
    return out


def move_block(x, half=6, by=2):
    out = x.copy()
    target = tuple(slice(c - half, c + half) for c in CENTRE)
    source = tuple(slice(c - half - (by if axis == 1 else 0), c + half - (by if axis == 1 else 0))
                   for axis, c in enumerate(CENTRE))
    out[target] = x[source]
    return out


def dark_blob(x):
    out = x.copy()
    out[_ball(x.shape, CENTRE + [12, 10, 8], 4)] = 0.1
    return out


def zero_slab(x):
    out = x.copy()
    out[:, :, 62:] = 0  # top 18 mm of the brain missing, as if the model grid had cut it off
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=Path, default=_default("../ixi-sites/heldout"),
                        help="held-out traveling-subject dataset of scripts/make_ixi_sites.py")
    parser.add_argument("--template", type=Path, default=_default("../shared/data/templates/MNI152_T1_2mm.nii.gz"))
    parser.add_argument("--mask", help="MNI152NLin6Asym 2 mm brain mask (default: TemplateFlow copy)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hcld-structure-threshold"))
    parser.add_argument("--n", type=int, default=10, help="number of subjects")
    parser.add_argument("--quick", action="store_true", help="honest site cases on siteA -> siteB only")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    subjects = prepare(args.sites, args.template, find_template_mask(args.mask), args.work, args.n)
    mask = np.load(args.work / "mask.npy")

    def noise(x, sd):
        return np.clip(x + rng.normal(0, sd, x.shape).astype(np.float32), 0, 1)

    results: dict[str, list[tuple[float, float, float]]] = {}

    def record(case, source, output):
        output = output * mask  # the harmonized image is brain only
        sp, blocks, _ = metrics.structure_scores(source, output, mask)
        dice = metrics.mask_dice(mask, metrics.output_mask(output, mask))
        results.setdefault(case, []).append((sp, metrics.worst_block(blocks), dice))

    start = time.perf_counter()
    for index, subject in enumerate(subjects):
        images = {site: np.load(args.work / f"{subject}_{site}.npy") for site in SITES}
        for a, b in [("siteA", "siteB")] if args.quick else itertools.permutations(SITES, 2):
            record("honest: same head, other site", images[a], images[b])
            # brain only before blurring, as a model fed skull-stripped images sees it: the output's
            # edge darkens toward the zero background
            record("honest: hist-matched to other site + blur 3mm", images[a],
                   blur(histogram_match(images[a], images[b], mask) * mask, 3))
        x = images["siteA"]
        record("honest: gamma 0.5 + noise 0.03", x, noise(x**0.5, 0.03))
        record("honest: gamma 2 + noise 0.03", x, noise(x**2, 0.03))
        record("honest: sigmoid + noise 0.03", x, noise(1 / (1 + np.exp(-(x - 0.5) * 8)), 0.03))
        record("honest: blur FWHM 4mm", x, blur(x, 4))
        record("honest: noise 0.05", x, noise(x, 0.05))
        record("damage: shift 2mm", x, shift(x, 1))
        record("damage: shift 4mm", x, shift(x, 2))
        record("damage: smooth warp 2mm", x, warp(x, 1, index))
        record("damage: smooth warp 4mm", x, warp(x, 2, index))
        record("damage: blur FWHM 8mm", x, blur(x, 8))
        record("damage: r16mm region blurred away", x, blur_region(x))
        record("damage: 24mm block moved 4mm", x, move_block(x))
        record("damage: dark r8mm blob", x, dark_blob(x))
        record("damage: other person's head", x, np.load(args.work / f"{subjects[(index + 1) % len(subjects)]}_siteA.npy"))
        record("damage: top 18mm of brain zeroed", x, zero_slab(x))
        print(f"  measured {subject}", flush=True)
    print(f"\n{len(subjects)} subjects, {time.perf_counter() - start:.0f} s; values: min / median / max\n")
    print(f"{'case':48s} {'structure preservation':>24s} {'worst 24 mm block':>24s} {'mask Dice':>24s}")
    for case, values in results.items():
        columns = np.array(values)
        cells = [f"{np.min(c):7.3f} {np.median(c):7.3f} {np.max(c):7.3f}" for c in columns.T]
        print(f"{case:48s} " + " ".join(f"{cell:>24s}" for cell in cells))
    print(f"\nthresholds: SP < {metrics.STRUCTURE_THRESHOLD}, worst block < {metrics.LOCAL_STRUCTURE_THRESHOLD}, "
          f"Dice < {metrics.MASK_DICE_THRESHOLD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
