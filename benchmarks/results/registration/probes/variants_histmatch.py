import sys, numpy as np
from pathlib import Path as _P
exec(open(_P(__file__).with_name('oracle_same_transform.py')).read().split('res = {}')[0].replace("images = qs.load_inputs(Path('/work/data/work-heldout/train/inputs'))", ""))
def prepx(sub, site, xfm):
    d = f'{W}/sub_{sub}_wf/t1w_ses_{site}_wf/anat_preproc_wf'
    img = apply_transform(nib.load(f'{d}/n4_brain/t1w_n4.nii.gz'), TPL, xfm)
    data = np.asarray(img.dataobj, np.float32)
    mask = refine_brain_mask(data, np.asarray(TM.dataobj), 2.0)
    lo, hi = scaling_reference(data, mask)
    s = scale_intensity(data, lo, hi)
    return crop_to_grid(np.where(mask, s, 0).astype(np.float32), grid), crop_to_grid(mask.astype(np.uint8), grid) > 0
sites = ['siteA', 'siteB', 'siteC', 'siteD']
for var in sys.argv[1].split(','):
    rows = []
    for sub in sys.argv[2].split(','):
        ims = {}
        for s in sites:
            x = (f'{W}/sub_{sub}_wf/t1w_ses_{s}_wf/anat_preproc_wf/register/T1w_to_template_fwd_xfm.mat' if var == 'current'
                 else f'/tmp/registration_variants/{var}/{sub}_{s}.mat')
            ims[s] = prepx(sub, s, x)
        for t in sites:
            hist = bundle.manifest['sites'][t]['intensity_histogram']
            for s in sites:
                if s == t: continue
                v, m = ims[s]; ref, rm = ims[t]
                hm = qs.histogram_match(v, m, hist['edges'], hist['density'])
                rows.append((s, t, qs.image_metrics(hm, ref, rm, v, m, hist)['ssim']))
    print(var, 'hm all %.4f' % np.mean([r[2] for r in rows]), ' from', ' '.join('%s:%.3f' % (s, np.mean([r[2] for r in rows if r[0] == s])) for s in sites),
          ' to', ' '.join('%s:%.3f' % (s, np.mean([r[2] for r in rows if r[1] == s])) for s in sites), flush=True)
