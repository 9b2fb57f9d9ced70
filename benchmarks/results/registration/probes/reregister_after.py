import sys, numpy as np
sys.path.insert(0, '/work/main/benchmarks'); sys.path.insert(0, '/work/main')
from pathlib import Path
import ants
import quality_simulated as qs
from hcld_bids.model.bundle import load_bundle
images = qs.load_inputs(Path('/work/data/work-heldout/train/inputs'))
bundle = load_bundle(Path('/work/main/hcld_bids/data/models/demo'))
for sub in sys.argv[1].split(','):
  for tgt in ['siteA','siteD']:
    hist = bundle.manifest['sites'][tgt]['intensity_histogram']
    ref, rm = images[sub][tgt]
    for src in ['siteA','siteB','siteC','siteD']:
        if src == tgt: continue
        inp, m = images[sub][src]
        hm = qs.histogram_match(inp, m, hist['edges'], hist['density'])
        s0 = qs.image_metrics(hm, ref, rm, inp, m, hist)['ssim']
        fi = ants.from_numpy(ref.astype('float32'), spacing=(2,2,2)); mo = ants.from_numpy(hm.astype('float32'), spacing=(2,2,2))
        r = {}
        for tt in ('Rigid','Affine'):
            reg = ants.registration(fi, mo, type_of_transform=tt)
            w = reg['warpedmovout'].numpy()
            mw = ants.apply_transforms(fi, ants.from_numpy(m.astype('float32'), spacing=(2,2,2)), reg['fwdtransforms'], interpolator='nearestNeighbor').numpy() > 0.5
            r[tt] = qs.image_metrics(w*mw, ref, rm, inp, mw, hist)['ssim']
        dice = 2*(m & rm).sum()/(m.sum()+rm.sum())
        print(sub, src, '->', tgt, 'hm %.3f rigid %.3f affine %.3f dice %.3f' % (s0, r['Rigid'], r['Affine'], dice), flush=True)
