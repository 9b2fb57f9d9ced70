"""Probe (validation heads): the lost detail x - D(E(x)) Wiener-filtered (scipy.signal.wiener) before it is
added back, against the plain gain 0.75.

    PYTHONPATH=$PWD python benchmarks/results/detail_wiener_val/probe.py BUNDLE IXI633,IXI168,IXI632,IXI216 VAL_INPUTS
"""
import sys, itertools, time
from pathlib import Path
import numpy as np, torch
REPO = Path(__file__).resolve().parents[3]; sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO/'benchmarks'))
from quality_simulated import load_inputs
from hcld_bids.model.bundle import load_bundle
from hcld_bids.model.evaluation import masked_ssim
from hcld_bids.model.fusion import adain
from hcld_bids.model.harmonize import Harmonizer, match_histogram
from scipy.signal import wiener
from scipy import ndimage as ndi
torch.set_num_threads(1)
subs = sys.argv[2].split(',') if len(sys.argv) > 2 else ['IXI633','IXI168','IXI632','IXI216']
bundle = sys.argv[1]
images = load_inputs(Path(sys.argv[3]))
sites = sorted(images[subs[0]])
h = Harmonizer(load_bundle(bundle, device='cpu'), device='cpu')
parts = {}
t0 = time.time()
with torch.inference_mode():
    for s in subs:
        for site in sites:
            vol, mask = images[s][site]
            z = h.encode(h._to_device([vol])); rec = h.decode(z)[0,0].cpu().numpy()
            d = vol - rec
            L = ndi.laplace(vol)[ndi.binary_erosion(mask, iterations=2)]; sig_img = 1.4826*float(np.median(np.abs(L-np.median(L))))/np.sqrt(42)
            sig_d = 1.4826*float(np.median(np.abs(d[mask]-np.median(d[mask]))))
            parts[(s,site)] = (z, d, sig_img, sig_d)
            print(s, site, f"sigma_img {sig_img:.4f} sigma_detail {sig_d:.4f}", flush=True)
scores = {}
for target in sites:
    st = h.style_from_site(target)
    for s in subs:
        ref, rmask = images[s][target]
        for source in sites:
            if source == target: continue
            inp, mask = images[s][source]; brain = rmask & mask
            z, d, si, sd = parts[(s, source)]
            with torch.inference_mode():
                fused = h.decode(adain(z, (st.channel_mean, st.channel_std)))[0,0].cpu().numpy()
            outs = {}
            cal = lambda v: match_histogram(np.clip(v,0,1), mask, *st.histogram)
            outs['g0.75'] = cal(fused + 0.75*d)
            for nm, n in [('w_auto', None), ('w_img', si**2), ('w_2img', 2*si**2)]:
                wd = wiener(d, 3, n) if n is not None else wiener(d, 3)
                for g in (0.75, 1.0, 1.25):
                    outs[f'{nm}_g{g}'] = cal(fused + g*wd)
            wd5 = wiener(d, 5, si**2)
            for g in (1.0, 1.25): outs[f'w5_img_g{g}'] = cal(fused + g*wd5)
            for k, o in outs.items():
                scores.setdefault((source, target, k), []).append(masked_ssim((o*mask)*brain, ref, brain))
methods = sorted({k for (_,_,k) in scores})
pairs = list(itertools.permutations(sites, 2))
print('pair', *methods, sep='\t')
means = {m: [] for m in methods}
for p in pairs:
    row = [np.mean(scores[(*p, m)]) for m in methods]
    for m, v in zip(methods, row): means[m].append(v)
    print(f'{p[0]}->{p[1]}', *[f'{v:.3f}' for v in row], sep='\t')
print('mean', *[f'{np.mean(means[m]):.4f}' for m in methods], sep='\t')
print('time', time.time()-t0)
