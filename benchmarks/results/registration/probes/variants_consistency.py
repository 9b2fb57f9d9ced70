"""Consistency of the template registration across the 4 renders of one head (same voxels, same position)."""
import sys, os, numpy as np, tempfile, time
import ants, nibabel as nib
sys.path.insert(0, '/work/main')
from hcld_bids.preproc._ants import to_ants
W = '/work/data/work-heldout/hcld_bids_wf'
TPL = '/work/data/tfhome/tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz'
TMASK = '/work/data/tfhome/tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz'
tpl = ants.image_read(TPL); tmask = ants.image_read(TMASK)
mk = tmask.numpy() > 0.5
idx = np.argwhere(mk)[::7]
pts = np.array([ants.transform_index_to_physical_point(tmask, tuple(int(v) for v in i)) for i in idx])
sites = ['siteA', 'siteB', 'siteC', 'siteD']
os.environ['ANTS_RANDOM_SEED'] = '20240917'

def mapped(xfm_files):
    # points in template space -> moving space (fwdtransforms map fixed points to moving)
    import pandas as pd
    df = pd.DataFrame(pts, columns=['x', 'y', 'z'])
    return ants.apply_transforms_to_points(3, df, xfm_files).values

def variant(name, sub, site):
    d = f'{W}/sub_{sub}_wf/t1w_ses_{site}_wf/anat_preproc_wf'
    if name == 'current':
        return [f'{d}/register/T1w_to_template_fwd_xfm.mat']
    head = ants.image_read(f'{d}/n4_head/t1w_n4.nii.gz')
    out = tempfile.mkdtemp(dir='/tmp/registration_variants')
    init = f'{d}/register/T1w_to_template_fwd_xfm.mat'
    if name == 'brainmask_affine':   # second affine stage, metric restricted to dilated template brain
        fm = ants.iMath(tmask, 'MD', 3)
        r = ants.registration(tpl, head, type_of_transform='Affine', initial_transform=init, mask=fm,
                              outprefix=out + '/r_', aff_metric='mattes')
    elif name == 'brain_to_brain':   # brain-extracted moving (first-pass mask) to the template brain
        bm = ants.image_read(f'{d}/mask_first_native/brain_mask_native.nii.gz')
        nb = ants.image_read(f'{d}/n4_brain/t1w_n4.nii.gz')
        fixed = tpl * ants.iMath(tmask, 'MD', 1)
        moving = nb * ants.iMath(bm, 'MD', 1)
        r = ants.registration(fixed, moving, type_of_transform='antsRegistrationSyNQuick[a]', initial_transform=init,
                              outprefix=out + '/r_')
    elif name == 'brain_to_brain_cc':
        bm = ants.image_read(f'{d}/mask_first_native/brain_mask_native.nii.gz')
        nb = ants.image_read(f'{d}/n4_brain/t1w_n4.nii.gz')
        fixed = tpl * ants.iMath(tmask, 'MD', 1)
        moving = nb * ants.iMath(bm, 'MD', 1)
        r = ants.registration(fixed, moving, type_of_transform='Affine', initial_transform=init,
                              outprefix=out + '/r_', aff_metric='GC')
    elif name.startswith('fine'):
        kw = dict(aff_iterations=(200, 100), aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0),
                  aff_random_sampling_rate=1.0, aff_sampling=32, aff_metric='mattes')
        if name.startswith('fine2'):
            kw.update(aff_iterations=(100, 50), aff_random_sampling_rate=0.5)
        if name.startswith('fine3'):
            kw.update(aff_iterations=(100,), aff_shrink_factors=(1,), aff_smoothing_sigmas=(0,))
        if name.startswith('fine5') or name.startswith('fine6'):
            kw.update(aff_iterations=(50,), aff_shrink_factors=(1,), aff_smoothing_sigmas=(0,), aff_random_sampling_rate=0.25)
        if name.startswith('fine6'):
            kw.update(mask=ants.iMath(tmask, 'MD', 5))
        if name.startswith('fine7'):
            kw.update(aff_iterations=(100, 50), aff_random_sampling_rate=0.25)
        if name.startswith('fine4'):
            kw.update(aff_iterations=(100,), aff_shrink_factors=(1,), aff_smoothing_sigmas=(0,), aff_random_sampling_rate=0.5)
        mv = head
        if 'smooth' in name:
            mv = ants.smooth_image(head, 1.0, sigma_in_physical_coordinates=False)
        if 'rigid' in name:
            r0 = ants.registration(tpl, mv, type_of_transform='Rigid', initial_transform=init, outprefix=out + '/q_',
                                   **{k.replace('aff_', 'aff_'): v for k, v in kw.items()})
        r = ants.registration(tpl, mv, type_of_transform='Affine', initial_transform=init, outprefix=out + '/r_', **kw)
    import shutil
    os.makedirs(f'/tmp/registration_variants/{name}', exist_ok=True)
    shutil.copy(r['fwdtransforms'][0], f'/tmp/registration_variants/{name}/{sub}_{site}.mat')
    return r['fwdtransforms']

subs = sys.argv[2].split(',')
for name in sys.argv[1].split(','):
    devs = {s: [] for s in sites}; t0 = time.time()
    for sub in subs:
        P = {s: mapped(variant(name, sub, s)) for s in sites}
        mean = np.mean([P[s] for s in sites], 0)
        for s in sites:
            devs[s].append(np.sqrt(np.mean(np.sum((P[s] - mean) ** 2, 1))))
        print(name, sub, ' '.join(f'{s}:{devs[s][-1]:.2f}' for s in sites), flush=True)
    print('==', name, 'rms dev from head mean (mm):', ' '.join(f'{s}:{np.mean(devs[s]):.2f}' for s in sites),
          'all %.2f' % np.mean([v for s in sites for v in devs[s]]), '%.0f s' % (time.time() - t0), flush=True)
