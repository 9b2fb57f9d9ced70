"""Probe: does averaging the restoration prior over mirrored copies of its input (test-time flips) help?

    PYTHONPATH=$PWD python benchmarks/results/restoration/probes/flips.py BUNDLE VAL_PACK [STATE ...]

The synthetic validation of train_restoration.py (the first 4 siteA images of VAL_PACK rendered at each of the
four simulated sites, fixed seeds; brain SSIM of the restored image to the clean rendering), for the bundle's
restoration prior and for each restoration STATE given, with no flip, the left-right flip averaged in, and all
8 mirror combinations averaged.
"""
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "scripts" / "demo_model"))
from train_restoration import load_network, site_images, validation_set  # noqa: E402

from hcld_bids.model import load_bundle  # noqa: E402
from hcld_bids.model.evaluation import masked_ssim  # noqa: E402
from hcld_bids.model.restore import restore_volume  # noqa: E402

torch.set_num_threads(2)
bundle, pack, states = Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
val = validation_set(*site_images(pack, "siteA", 4))
nets = [("bundle", load_bundle(bundle).restoration)] + [(str(s), load_network(s)[0]) for s in states]
sets = {"none": [()], "lr": [(), (0,)], "all8": [tuple(a for a, f in zip(range(3), c) if f)
                                                 for c in itertools.product((0, 1), repeat=3)]}
print(f"degraded: {np.mean([masked_ssim(d, c, m) for d, c, m in val]):.4f}")
for name, net in nets:
    for label, flips in sets.items():
        t0 = time.perf_counter()
        scores = []
        for d, c, m in val:
            outs = [np.flip(restore_volume(net, np.ascontiguousarray(np.flip(d, f)), np.flip(m, f)), f) if f
                    else restore_volume(net, d, m) for f in flips]
            scores.append(masked_ssim(np.mean(outs, axis=0), c, m))
        per_site = np.asarray(scores).reshape(-1, 4).mean(0)
        print(f"{name:40s} {label:5s} {np.mean(scores):.4f}  per site A/B/C/D "
              f"{' / '.join(f'{s:.4f}' for s in per_site)}  {time.perf_counter() - t0:.0f} s", flush=True)
