"""Probe (as run, 2026-12-07): brain-mask refinement variants (the image smoothed before the mask is refined) on the N4 template-space images of a train-level work dir; run from the repository root with PYTHONPATH=$PWD:benchmarks."""
"""Brain-mask consistency across scanners: refine_brain_mask variants on the N4 template-space images of the
work dir; Dice and volume ratio to the siteA mask, and histogram-matching SSIM toward each site."""
import sys, numpy as np, nibabel as nib
from pathlib import Path
from scipy import ndimage as ndi
import quality_simulated as qs
from hcld_bids.preproc.brainmask import refine_brain_mask
from hcld_bids.preproc.intensity import scaling_reference, scale_intensity
from hcld_bids.preproc.grid import model_grid, crop_to_grid
from hcld_bids.model.bundle import load_bundle
W = Path(sys.argv[1]); subs = sys.argv[2].split()
tm = np.asarray(nib.as_closest_canonical(nib.load('/work/data/tfhome/tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz')).dataobj) > 0
grid = model_grid('MNI152NLin6Asym', 2)
hists = load_bundle(Path('/work/main/hcld_bids/data/models/demo')).manifest['sites']
sites = ['siteA', 'siteB', 'siteC', 'siteD']
def variants(img):
    yield 'current', refine_brain_mask(img, tm, 2.0)
    for s in (0.5, 0.75, 1.0):
        sm = ndi.gaussian_filter(img, s)
        yield f'gauss{s}', refine_brain_mask(sm, tm, 2.0)
    yield 'median3', refine_brain_mask(ndi.median_filter(img, 3), tm, 2.0)
res = {}
for sub in subs:
    data = {}
    for site in sites:
        f = W / f'hcld_bids_wf/sub_{sub}_wf/t1w_ses_{site}_wf/anat_preproc_wf/to_template/resampled.nii.gz'
        img = np.asarray(nib.as_closest_canonical(nib.load(f)).dataobj, dtype=np.float32)
        for name, m in variants(img):
            lo, hi = scaling_reference(img, m, (0.5, 99.5))
            v = crop_to_grid(np.where(m, scale_intensity(img, lo, hi), 0).astype(np.float32), grid)
            data.setdefault(name, {})[site] = (v, crop_to_grid(m.astype(np.uint8), grid) > 0)
    for name, d in data.items():
        r = res.setdefault(name, {'dice': [], 'vol': [], 'ssim_hm': [], 'ssim_in': []})
        a = d['siteA'][1]
        for site in sites[1:]:
            m = d[site][1]; r['dice'].append(2 * (a & m).sum() / (a.sum() + m.sum())); r['vol'].append(m.sum() / a.sum())
        for t in sites:
            ref, rm = d[t]; h = hists[t]['intensity_histogram']
            for s in sites:
                if s == t: continue
                v, m = d[s]
                out = qs.histogram_match(v, m, h['edges'], h['density'])
                r['ssim_hm'].append(qs.image_metrics(out, ref, rm, v, m, h)['ssim'])
                r['ssim_in'].append(qs.image_metrics(v, ref, rm, v, m, h)['ssim'])
    print(sub, {n: round(float(np.mean(res[n]['ssim_hm'][-12:])), 4) for n in res}, flush=True)
for n, r in res.items():
    print(f"{n:10s} dice to siteA {np.mean(r['dice']):.4f} (min {np.min(r['dice']):.4f})  volume ratio B/C/D "
          f"{np.mean(r['vol'][0::3]):.3f}/{np.mean(r['vol'][1::3]):.3f}/{np.mean(r['vol'][2::3]):.3f}  "
          f"SSIM input {np.mean(r['ssim_in']):.4f}  hm {np.mean(r['ssim_hm']):.4f}")
