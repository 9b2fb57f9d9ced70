"""Mean SSIM of each method in quality_simulated.py's pairs.tsv files (cross-site pairs only): all heads, the
4 regime-choice validation heads, by source site, and structure preservation.

    python benchmarks/results/restoration/probes/compare_pairs.py PAIRS.tsv [PAIRS.tsv ...]
"""
import csv, sys, collections, numpy as np
VAL4 = {"IXI633", "IXI168", "IXI632", "IXI216"}
for path in sys.argv[1:]:
    rows = list(csv.DictReader(open(path), delimiter='\t'))
    by = collections.defaultdict(list); src = collections.defaultdict(list); v4 = collections.defaultdict(list)
    for r in rows:
        if r['source'] == r['target']: continue
        by[r['method']].append(float(r['ssim'])); src[(r['method'], r['source'])].append(float(r['ssim']))
        if r['subject'] in VAL4: v4[r['method']].append(float(r['ssim']))
    print(path)
    for m in by:
        val4 = np.mean(v4[m]) if v4[m] else float("nan")
        by_source = " / ".join(f"{np.mean(src[(m, s)]):.4f}" for s in ("siteA", "siteB", "siteC", "siteD"))
        struct = np.mean([float(r["structure_preservation"]) for r in rows
                          if r["method"] == m and r["source"] != r["target"]])
        print(f"  {m:20s} n={len(by[m])} {np.mean(by[m]):.4f} val4 {val4:.4f} from A/B/C/D {by_source}  "
              f"struct {struct:.4f}")
