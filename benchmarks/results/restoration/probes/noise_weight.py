"""Probe: a restoration weight per image from its estimated noise, scored from per-pair rows already measured.

    python benchmarks/results/restoration/probes/noise_weight.py INPUTS PAIRS_VAL.tsv PAIRS_TEST.tsv

Each pairs file holds, per (head, source, target), the SSIM of the default (restore 0.5: method ``hcld``) and of
restore 1.0 (``r1`` or ``restore1``). The rule takes restore 1.0 when the source image's noise, estimated by
scikit-image's wavelet ``estimate_sigma`` (needs PyWavelets) inside the brain mask (INPUTS: the model-grid images
``sub-<s>_ses-<site>_{t1w,mask}.nii.gz``), exceeds a threshold, else 0.5. The threshold is chosen on the
validation file and then applied to the test file.
"""
import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import find_objects
from skimage.restoration import estimate_sigma

inputs, val_path, test_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]


def noise(subject, site):
    vol = np.asarray(nib.load(inputs / f"sub-{subject}_ses-{site}_t1w.nii.gz").dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(inputs / f"sub-{subject}_ses-{site}_mask.nii.gz").dataobj) > 0
    box = find_objects(mask.astype(np.uint8))[0]
    return float(estimate_sigma(vol[box] * mask[box]))


def load(path):
    rows = [r for r in csv.DictReader(open(path), delimiter="\t") if r["source"] != r["target"]]
    full = "r1" if any(r["method"] == "r1" for r in rows) else "restore1"
    half = {(r["subject"], r["source"], r["target"]): float(r["ssim"]) for r in rows if r["method"] == "hcld"}
    one = {(r["subject"], r["source"], r["target"]): float(r["ssim"]) for r in rows if r["method"] == full}
    sigma = {(s, a): noise(s, a) for s, a, _ in half}
    return half, one, sigma


def score(data, threshold):
    half, one, sigma = data
    return float(np.mean([one[k] if sigma[k[:2]] > threshold else half[k] for k in half]))


val, test = load(val_path), load(test_path)
for name, (half, one, sigma) in (("validation", val), ("test", test)):
    by_site = {}
    for (s, a), v in sigma.items():
        by_site.setdefault(a, []).append(v)
    print(name, "noise estimate by site:", {a: f"{min(v):.4f}-{max(v):.4f}" for a, v in sorted(by_site.items())})
candidates = sorted(set(val[2].values()))
thresholds = [0.0] + [(a + b) / 2 for a, b in zip(candidates, candidates[1:])] + [1.0]
best = max(thresholds, key=lambda t: score(val, t))
print(f"restore 0.5 everywhere: validation {score(val, 1.0):.5f}, test {score(test, 1.0):.5f}")
print(f"restore 1.0 everywhere: validation {score(val, 0.0):.5f}, test {score(test, 0.0):.5f}")
print(f"chosen on validation: restore 1.0 above sigma {best:.4f}: validation {score(val, best):.5f}, "
      f"test {score(test, best):.5f}")
