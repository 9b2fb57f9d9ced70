"""Probe (as run, 2026-12-07): brain-mask refinement with other thresholds (multi-level Otsu) in place of the two-class Otsu of the band (with a third argument "quantile": fixed quantiles of the core and the template mask alone); same inputs and scores as smoothing.py."""
import sys, numpy as np, nibabel as nib
from pathlib import Path
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu, threshold_multiotsu
import quality_simulated as qs
from hcld_bids.preproc import brainmask as bm
from hcld_bids.preproc.intensity import scaling_reference, scale_intensity
from hcld_bids.preproc.grid import model_grid, crop_to_grid
from hcld_bids.model.bundle import load_bundle
W = Path(sys.argv[1]); subs = sys.argv[2].split()
tm = np.asarray(nib.as_closest_canonical(nib.load('/work/data/tfhome/tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz')).dataobj) > 0
grid = model_grid('MNI152NLin6Asym', 2)
hists = load_bundle(Path('/work/main/hcld_bids/data/models/demo')).manifest['sites']
sites = ['siteA', 'siteB', 'siteC', 'siteD']
def refine(image, thr_fn):
    voxel = 2.0; band = 4.0; close = 6.0
    dilated, core = bm._template_band(tm, band, voxel)
    values = image[dilated]
    threshold = thr_fn(values, image[core])
    ceiling = np.percentile(image[core], bm.FAT_PERCENTILE)
    fat = ~core & (image > ceiling)
    mask = core | (dilated & (image > threshold) & ~fat)
    mask = bm.closing(mask, close, voxel)
    mask = ndi.binary_fill_holes(mask)
    return bm.largest_component(ndi.binary_fill_holes(mask & ~fat)), threshold
THR = {
  'otsu': lambda v, c: threshold_otsu(v),
  'mo3_0': lambda v, c: threshold_multiotsu(v, classes=3)[0],
  'mo4_1': lambda v, c: threshold_multiotsu(v, classes=4)[1],
  'mo4_0': lambda v, c: threshold_multiotsu(v, classes=4)[0],
  'core_mo3_0': lambda v, c: threshold_multiotsu(c, classes=3)[0],
}
# third argument "quantile": thresholds at fixed quantiles of the core (a monotone contrast curve cannot move
# which voxels lie above them) and the template mask alone, beside the pipeline's Otsu
QUANTILE = {f"q{round(100 * q):02d}": (lambda q: lambda v, c: np.quantile(c, q))(q) for q in (0.03, 0.06, 0.10, 0.15, 0.20)}
if sys.argv[3:] == ['quantile']:
    THR = {**QUANTILE, 'tpl': lambda v, c: np.inf, 'otsu': THR['otsu']}
res = {}
for sub in subs:
    data = {}
    for site in sites:
        f = W / f'hcld_bids_wf/sub_{sub}_wf/t1w_ses_{site}_wf/anat_preproc_wf/to_template/resampled.nii.gz'
        img = np.asarray(nib.as_closest_canonical(nib.load(f)).dataobj, dtype=np.float32)
        wm = np.percentile(img[bm._template_band(tm, 4.0, 2.0)[1]], 90)
        line = []
        for name, fn in THR.items():
            m, t = refine(img, fn)
            line.append(f'{name} {t / wm:.2f}' + (f' q={np.mean(img[bm._template_band(tm, 4.0, 2.0)[1]] < t):.3f}'
                                                 if sys.argv[3:] == ['quantile'] else ''))
            lo, hi = scaling_reference(img, m, (0.5, 99.5))
            v = crop_to_grid(np.where(m, scale_intensity(img, lo, hi), 0).astype(np.float32), grid)
            data.setdefault(name, {})[site] = (v, crop_to_grid(m.astype(np.uint8), grid) > 0)
        print(sub, site, 'threshold / core p90:', ', '.join(line), flush=True)
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
