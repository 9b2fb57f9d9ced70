import sys, numpy as np, nibabel as nib
sys.path.insert(0, '/work/main/benchmarks'); sys.path.insert(0, '/work/main')
from pathlib import Path
import quality_simulated as qs
from hcld_bids.model.bundle import load_bundle
from hcld_bids.preproc.registration import apply_transform
from hcld_bids.preproc.brainmask import refine_brain_mask
from hcld_bids.preproc.intensity import scaling_reference, scale_intensity
from hcld_bids.preproc.grid import crop_to_grid, model_grid
W = '/work/data/work-heldout/hcld_bids_wf'
TPL = nib.load('/work/data/tfhome/tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz')
TM = nib.load('/work/data/tfhome/tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz')
images = qs.load_inputs(Path('/work/data/work-heldout/train/inputs'))
bundle = load_bundle(Path('/work/main/hcld_bids/data/models/demo'))
import inspect; print(inspect.signature(refine_brain_mask), inspect.signature(model_grid))
grid = model_grid('MNI152NLin6Asym', 2)
def prep(sub, site, xfm_site, mask_from=None):
    d = f'{W}/sub_{sub}_wf/t1w_ses_{site}_wf/anat_preproc_wf'
    x = f'{W}/sub_{sub}_wf/t1w_ses_{xfm_site}_wf/anat_preproc_wf/register/T1w_to_template_fwd_xfm.mat'
    img = apply_transform(nib.load(f'{d}/n4_brain/t1w_n4.nii.gz'), TPL, x)
    data = np.asarray(img.dataobj, np.float32)
    mask = refine_brain_mask(data, np.asarray(TM.dataobj), 2.0) if mask_from is None else mask_from
    lo, hi = scaling_reference(data, mask)
    s = scale_intensity(data, lo, hi)
    return crop_to_grid(np.where(mask, s, 0).astype(np.float32), grid), crop_to_grid(mask.astype(np.uint8), grid) > 0, mask
res = {}
for sub in sys.argv[1].split(','):
    tgt = 'siteA'; hist = bundle.manifest['sites'][tgt]['intensity_histogram']
    ref, rm = images[sub][tgt]
    _, _, mA = prep(sub, 'siteA', 'siteA')
    for src in ['siteB', 'siteC', 'siteD']:
        for name, (v, m) in {'stored': images[sub][src], 'own': prep(sub, src, src)[:2],
                             'xfmA': prep(sub, src, 'siteA')[:2], 'xfmA_maskA': prep(sub, src, 'siteA', mA)[:2]}.items():
            hm = qs.histogram_match(v, m, hist['edges'], hist['density'])
            r = qs.image_metrics(hm, ref, rm, v, m, hist)['ssim']
            res.setdefault((src, name), []).append(r)
        print(sub, src, {k[1]: round(v[-1], 4) for k, v in res.items() if k[0] == src}, flush=True)
for k, v in res.items(): print(k, round(np.mean(v), 4))
