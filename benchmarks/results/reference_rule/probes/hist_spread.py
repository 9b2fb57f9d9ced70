import sys, itertools, numpy as np
sys.path.insert(0, "benchmarks")
from quality_simulated import load_inputs
from hcld_bids.model.harmonize import brain_histogram
def w1(a, b):
    e, da = a; _, db = b
    ca = np.cumsum(da*np.diff(e)); cb = np.cumsum(db*np.diff(e))
    return float(np.sum(np.abs(ca-cb)*np.diff(e)))
imgs = load_inputs(sys.argv[1])
H = {(s, site): brain_histogram(*imgs[s][site]) for s in imgs for site in imgs[s]}
sites = sorted({k[1] for k in H}); subs = sorted(imgs)
for site in sites:
    d = [w1(H[a, site], H[b, site]) for a, b in itertools.combinations(subs, 2)]
    print(site, "between heads W1 mean %.4f rms %.4f max %.4f" % (np.mean(d), np.sqrt(np.mean(np.square(d))), np.max(d)))
for s1, s2 in itertools.combinations(sites, 2):
    same = [w1(H[s, s1], H[s, s2]) for s in subs]
    diff = [w1(H[a, s1], H[b, s2]) for a in subs for b in subs if a != b]
    print(s1, s2, "same head %.4f, other head %.4f" % (np.mean(same), np.mean(diff)))
