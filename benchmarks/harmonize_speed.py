#!/usr/bin/env python
"""Time and peak memory of harmonizing one volume with the default HCLD architecture, and throughput of batches.

For each grid (2 mm 80x96x80, 1 mm 160x192x160) and device (CPU; CUDA when available) it prints the
seconds spent in encode / inversion / sampling / decode and the peak resident memory of a process that
harmonizes one volume; on CUDA also the peak GPU memory that tensors took during one harmonization
(``torch.cuda.max_memory_allocated``; the column stays empty on the CPU). It also runs, in the same
process and with the same weights, a straightforward reference loop that does what the research code does
per subject (benchmarks/_reference_path.py) and prints the speed-up (at 1 mm on the CPU the reference is
skipped: it needs a 23.6 GB score matrix). Weights are random: timing does not depend on weight values.

On CUDA our path runs as the participant level runs it: bf16 weights cast once, each UNet call replayed from
a CUDA graph (``--no-cuda-graphs`` for the eager path; ``--compare-eager`` times both in one process).
``--batch-sizes 1,4,16`` adds one row per batch size: seconds per call of ``harmonize_batch``, volumes per
second and the peak GPU memory of the call (row ``throughput``). On CUDA a ``tolerance`` row compares the
GPU path with float32 on the trained demo model (its own regime, a 2 mm vendored scan): the mean and the
99.9th percentile of the absolute difference inside the head.

    PYTHONPATH=$PWD python benchmarks/harmonize_speed.py [--grids 2mm,1mm] [--reps 3] [--out speed.tsv]
    PYTHONPATH=$PWD python benchmarks/harmonize_speed.py --devices cuda --batch-sizes 1,4,16 --compare-eager
    PYTHONPATH=$PWD python benchmarks/harmonize_speed.py --quick      # tiny network, seconds

Lines are tab-separated; ``--out`` writes the table as a TSV file as well.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Back large tensors with transparent huge pages (PyTorch reads this once, at its first allocation):
# a fresh 157 MB activation otherwise costs ~40,000 page faults, about as long as a convolution on it.
# Export THP_MEM_ALLOC_ENABLE=0 to measure without.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _reference_path as reference  # noqa: E402
from _reference_path import harmonize_reference  # noqa: E402

from hcld_bids.model import AutoencoderKL, DiffusionUNet, Harmonizer, ModelBundle, NoiseSchedule  # noqa: E402
from hcld_bids.model.prototypes import prototype_from_latents  # noqa: E402

GRIDS = {"2mm": (80, 96, 80), "1mm": (160, 192, 160), "quick": (32, 48, 32)}
QUICK_AE = dict(channels=(8, 16, 16), num_res_blocks=1, norm_groups=4)
QUICK_UNET = dict(channels=(8, 16, 16), head_channels=16, norm_groups=4)
COLUMNS = ["grid", "device", "path", "threads", "encode_s", "inversion_s", "sampling_s", "decode_s", "total_s",
           "unet_calls", "batch", "volumes_per_s", "peak_rss_mib", "peak_gpu_mib", "note"]
#: Batch sizes of the throughput rows when --batch-sizes is not given: CUDA only (on the CPU a batch is not
#: faster than its volumes one by one).
CUDA_BATCH_SIZES = "1,4,16"


def build(quick: bool, seed: int = 0):
    """Networks with seeded random weights (identical in every process) and a bundle around them."""
    torch.manual_seed(seed)
    ae = AutoencoderKL(**(QUICK_AE if quick else {})).eval()
    unet = DiffusionUNet(**(QUICK_UNET if quick else {})).eval()
    for p in unet.out_conv.parameters():  # the zero-initialised output would make every step trivial
        torch.nn.init.normal_(p, std=0.02)
    return ae, unet


def phantom(grid, seed: int) -> np.ndarray:
    """A smooth head-like volume in [0, 1] (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in grid]
    r2 = sum(a ** 2 for a in np.meshgrid(*axes, indexing="ij"))
    vol = np.clip(1.2 - r2, 0, 1) * (0.7 + 0.1 * rng.standard_normal(grid, dtype=np.float32))
    return np.clip(vol, 0, 1).astype(np.float32)


def make_harmonizer(ae, unet, grid, device, autocast=None, channels_last=True, cuda_graphs=None):
    """Harmonizer whose target style is a site prototype (a cached latent: no target encode per volume).
    On CUDA it casts the networks' weights to bf16 (unless ``autocast`` is False): give it its own copy."""
    latent = ae.latent_shape(grid)
    proto = prototype_from_latents(torch.randn(1, *latent, generator=torch.Generator().manual_seed(1)))
    bundle = ModelBundle(path=Path("<in-memory>"), manifest={}, autoencoder=ae, unet=unet, schedule=NoiseSchedule(),
                         scale_factor=1.0, prototypes={"target": proto.latent},
                         prototype_stats={"target": {"channel_mean": proto.channel_mean,
                                                     "channel_std": proto.channel_std, "count": 1}})
    return Harmonizer(bundle, device=device, autocast=autocast, channels_last=channels_last,
                      cuda_graphs=cuda_graphs)


def _reset_gpu_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak_mib(device):
    """Peak memory allocated by tensors on a CUDA device since the last reset (None on the CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def run_ours(h: Harmonizer, vol, steps, style=None):
    """Output, seconds per stage (and ``total``), peak GPU MiB of the call (None on the CPU)."""
    _reset_gpu_peak(h.device)
    t0 = time.perf_counter()
    style = h.style_from_site("target") if style is None else style
    out = h.harmonize(vol, style, inversion_steps=steps[0], sampling_steps=steps[1])
    total = time.perf_counter() - t0
    return out, dict(h.last_timings, total=total), _gpu_peak_mib(h.device)


def run_batch(h: Harmonizer, vols, steps, style):
    """Seconds of one ``harmonize_batch`` call on ``vols`` and its peak GPU MiB (None on the CPU)."""
    _reset_gpu_peak(h.device)
    t0 = time.perf_counter()
    h.harmonize_batch(vols, style, inversion_steps=steps[0], sampling_steps=steps[1])
    seconds = time.perf_counter() - t0  # the outputs are copied to host memory: the GPU has finished
    return seconds, _gpu_peak_mib(h.device)


def load_scan(name: str = "siemens_prismafit3T_xa30_s5_nonorm.nii.gz", grid=(80, 96, 80)) -> np.ndarray:
    """A vendored real scan scaled to [0, 1] (0.5/99.5 percentiles) and cropped around the head to ``grid``."""
    from hcld_bids.testing.volumes import real_volume

    return real_volume(name, grid)


def tolerance(device) -> dict:
    """|GPU path - float32| on the trained demo model with its own regime, inside the head of a 2 mm scan."""
    from hcld_bids.config import DEMO_MODEL_DIR
    from hcld_bids.model import load_bundle

    vol = load_scan()
    fast = Harmonizer(load_bundle(DEMO_MODEL_DIR), device=device)
    exact = Harmonizer(load_bundle(DEMO_MODEL_DIR), device=device, autocast=False, cuda_graphs=False)
    site = sorted(fast.bundle.prototypes)[0]
    diff = np.abs(fast.harmonize(vol, fast.style_from_site(site)) - exact.harmonize(vol, exact.style_from_site(site)))
    inside = diff[vol > 0.05]
    return {"mean": float(inside.mean()), "p99.9": float(np.percentile(inside, 99.9)), "max": float(inside.max()),
            "regime": fast.default_regime.kind, "calls": fast.default_regime.unet_calls()}


def run_reference(ae, unet, vol, target, steps, device):
    x = torch.from_numpy(vol)[None, None].to(device)
    y = torch.from_numpy(target)[None, None].to(device)
    _reset_gpu_peak(device)
    t0 = time.perf_counter()
    out, times = harmonize_reference(ae, unet, NoiseSchedule(), 1.0, x, y, *steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    return out[0, 0].cpu().numpy(), dict(times, total=total), _gpu_peak_mib(device)


def agreement(h: Harmonizer, ref_ae, ref_unet, vol, device) -> dict:
    """Largest difference of our networks' outputs from the reference ones, relative to the largest value."""
    x = torch.from_numpy(vol)[None, None].to(device)
    with torch.no_grad():
        z_ref = reference.encode(ref_ae, x)
        e_ref = reference.unet_eps(ref_unet, z_ref, 500, z_ref.flip(2))
        d_ref = reference.decode(ref_ae, z_ref)
    z = h.encode(h._to_device([vol]))
    dtype = next(h.unet.parameters()).dtype  # bfloat16 on CUDA: our networks' inputs take their dtype
    with torch.inference_mode(), h._autocast():
        z_in = z_ref.to(dtype).contiguous(memory_format=h.memory_format)
        e = h.unet(z_in, 500, z_ref.flip(2).to(dtype)).float()
    d = h.decode(z_ref)

    def rel(a, b):
        return float((a.float() - b.float()).abs().max() / b.abs().max().clamp_min(1e-12))

    return {"encode": rel(z, z_ref), "unet": rel(e, e_ref), "decode": rel(d, d_ref)}


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory. VmHWM starts afresh at exec, unlike ru_maxrss,
    which Linux carries over from the forked parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args) -> None:
    """One harmonization in a fresh process; prints its timings and peak RSS as JSON."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    grid = GRIDS[args.grid]
    ae, unet = build(args.quick)
    vol = phantom(grid, 3)
    steps = (args.inversion_steps, args.sampling_steps)
    if args.child == "ours":
        _, times, _ = run_ours(make_harmonizer(ae, unet, grid, device), vol, steps)
    else:
        _, times, _ = run_reference(ae.to(device), unet.to(device), vol, phantom(grid, 4), steps, device)
    print(json.dumps({"times": times, "peak_rss_mib": peak_rss_mib()}))


def in_child(args, path: str, grid: str, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--grid-name", grid, "--device", device, "--threads",
           str(args.threads), "--inversion-steps", str(args.inversion_steps), "--sampling-steps",
           str(args.sampling_steps)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"child exited {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_row(row: dict) -> str:
    out = []
    for c in COLUMNS:
        v = row.get(c, "")
        out.append(f"{v:.3f}" if isinstance(v, float) else str(v))
    return "\t".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", default="2mm,1mm", help="comma-separated: 2mm, 1mm")
    ap.add_argument("--devices", default="auto", help="cpu, cuda or auto (cpu, plus cuda when available)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of our path; the best is reported")
    ap.add_argument("--reference-reps", type=int, default=2, help="repetitions of the reference loop")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all; 1 with --quick)")
    ap.add_argument("--inversion-steps", type=int, default=30)
    ap.add_argument("--sampling-steps", type=int, default=10)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA (ours runs in float32 too)")
    ap.add_argument("--no-channels-last", action="store_true", help="our networks in the default memory layout")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="ours on CUDA without CUDA graphs (eager)")
    ap.add_argument("--compare-eager", action="store_true",
                    help="on CUDA also time ours without CUDA graphs, in the same process (row ours-eager)")
    ap.add_argument("--batch-sizes", default=None,
                    help=f"comma-separated batch sizes of the throughput rows (default: {CUDA_BATCH_SIZES} on CUDA, "
                         "none on the CPU; 1,2 with --quick)")
    ap.add_argument("--no-tolerance", action="store_true", help="skip the GPU-vs-float32 row on the demo model")
    ap.add_argument("--quick", action="store_true", help="tiny network on a 32x48x32 grid, 3 + 2 steps")
    ap.add_argument("--out", type=Path, help="also write the table as TSV")
    ap.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--grid-name", dest="grid", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.grids, args.reps, args.reference_reps = "quick", 1, 1
        args.inversion_steps, args.sampling_steps = 3, 2
        args.threads = args.threads or 1
        args.batch_sizes = args.batch_sizes or "1,2"
    args.threads = args.threads or torch.get_num_threads()
    if args.child:
        child(args)
        return 0

    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else \
        args.devices.split(",")
    steps = (args.inversion_steps, args.sampling_steps)
    print(f"# hcld-bids harmonize_speed: default architecture{' (quick: tiny network)' if args.quick else ''} with "
          f"random weights (timing does not depend on weight values); torch {torch.__version__}; "
          f"{args.threads} CPU threads; {steps[0]} inversion + {steps[1]} sampling UNet calls; "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}; ours on CUDA: "
          f"{'float32' if args.fp32 else 'bf16 weights and autocast'}, "
          f"{'default layout' if args.no_channels_last else 'channels-last'}, "
          f"{'eager' if args.no_cuda_graphs else 'CUDA graphs'}")
    print("# ours: source encode + UNet calls + one decode; the target style (a reference image here, a site "
          "prototype in production) is encoded once and cached")
    print("# reference: research path per subject = target encode + source encode + UNet calls + 3 decodes, fp32, "
          "default layout, nearest upsampling + conv, materialised attention")
    print("\t".join(COLUMNS))
    rows = []

    def emit(row):
        rows.append(row)
        print(fmt_row(row), flush=True)

    for dev_name in devices:
        device = torch.device(dev_name)
        for grid_name in args.grids.split(","):
            grid = GRIDS[grid_name]
            label = f"{grid_name}-{'x'.join(map(str, grid))}"
            base = {"grid": label, "device": dev_name, "threads": args.threads}
            big = grid_name == "1mm" and dev_name == "cpu"
            ours_best = None
            cuda = device.type == "cuda"
            if not big:  # 1 mm on CPU runs once, in the memory subprocess below
                ae, unet = build(args.quick)
                ref_ae, ref_unet = copy.deepcopy(ae).to(device), copy.deepcopy(unet).to(device)
                eager_nets = (copy.deepcopy(ae), copy.deepcopy(unet)) if cuda and args.compare_eager else None
                h = make_harmonizer(ae, unet, grid, device, autocast=False if args.fp32 else None,
                                    channels_last=not args.no_channels_last,
                                    cuda_graphs=False if args.no_cuda_graphs else None)
                vol, target = phantom(grid, 3), phantom(grid, 4)
                # The reference image's style is encoded once and cached, as for any number of subjects; the
                # timed runs then cost the same as with a site prototype and compute exactly what the
                # reference loop computes.
                style = h.style_from_volume(target)
                run_ours(h, vol, (1, 1), style)  # warm-up: oneDNN builds its kernels on first use
                ours_out = ref_out = ref_best = None
                gpu_peaks = {}  # the same every repetition; the largest is kept
                # interleaved, so that a change of load on a shared machine hits both paths alike
                for rep in range(max(args.reps, args.reference_reps, 1)):
                    if rep < max(1, args.reps):
                        ours_out, t, peak = run_ours(h, vol, steps, style)
                        gpu_peaks["ours"] = max(peak or 0.0, gpu_peaks.get("ours", 0.0))
                        ours_best = t if ours_best is None or t["total"] < ours_best["total"] else ours_best
                    if rep < max(1, args.reference_reps):
                        ref_out, t, peak = run_reference(ref_ae, ref_unet, vol, target, steps, device)
                        gpu_peaks["reference"] = max(peak or 0.0, gpu_peaks.get("reference", 0.0))
                        ref_best = t if ref_best is None or t["total"] < ref_best["total"] else ref_best
                graphs = "CUDA graphs, " if cuda and h.cuda_graphs else ""
                emit(dict(base, path="ours", **{f"{k}_s": v for k, v in ours_best.items()},
                          peak_gpu_mib=gpu_peaks["ours"] or "", batch=1, volumes_per_s=1.0 / ours_best["total"],
                          unet_calls=sum(steps), note=f"{graphs}best of {max(1, args.reps)}"))
                agree = agreement(h, ref_ae, ref_unet, vol, device)
                agree["end-to-end"] = float(np.abs(ours_out - ref_out).max())
                emit(dict(base, path="reference", **{f"{k}_s": v for k, v in ref_best.items()},
                          peak_gpu_mib=gpu_peaks["reference"] or "",
                          unet_calls=sum(steps), note=f"best of {args.reference_reps}; max rel |ours - reference|: "
                          + ", ".join(f"{k} {v:.1e}" for k, v in agree.items())
                          + " (absolute for end-to-end; random weights amplify rounding over the DDIM steps)"))
                emit(dict(base, path="speedup", total_s=ref_best["total"] / ours_best["total"],
                          encode_s=ref_best["encode"] / ours_best["encode"],
                          inversion_s=ref_best["inversion"] / ours_best["inversion"],
                          sampling_s=ref_best["sampling"] / ours_best["sampling"],
                          decode_s=ref_best["decode"] / ours_best["decode"], note="reference / ours, same process"))
                if eager_nets is not None:  # the same path without CUDA graphs, same weights
                    he = make_harmonizer(*eager_nets, grid, device, autocast=False if args.fp32 else None,
                                         channels_last=not args.no_channels_last, cuda_graphs=False)
                    run_ours(he, vol, (1, 1), style)
                    best, peak = None, 0.0
                    for _ in range(max(1, args.reps)):
                        _, t, p = run_ours(he, vol, steps, he.style_from_volume(target))
                        best, peak = (t if best is None or t["total"] < best["total"] else best), max(peak, p or 0.0)
                    emit(dict(base, path="ours-eager", **{f"{k}_s": v for k, v in best.items()}, batch=1,
                              volumes_per_s=1.0 / best["total"], peak_gpu_mib=peak or "", unet_calls=sum(steps),
                              note=f"no CUDA graphs, best of {max(1, args.reps)}"))
                    del he, eager_nets
                sizes = args.batch_sizes if args.batch_sizes is not None else (CUDA_BATCH_SIZES if cuda else "")
                for size in [int(b) for b in sizes.split(",") if b.strip()]:
                    vols = [phantom(grid, 10 + i) for i in range(size)]
                    run_batch(h, vols, (1, 1), style)  # warm-up: kernels, and on CUDA the graph of this batch size
                    best, peak = None, 0.0
                    for _ in range(max(1, min(args.reps, 2))):
                        seconds, p = run_batch(h, vols, steps, style)
                        best, peak = min(best or seconds, seconds), max(peak, p or 0.0)
                    emit(dict(base, path="throughput", batch=size, total_s=best, volumes_per_s=size / best,
                              unet_calls=sum(steps), peak_gpu_mib=peak or "",
                              note=f"one harmonize_batch call of {size} volume(s), best of {max(1, min(args.reps, 2))}"))
                del ae, unet, ref_ae, ref_unet, h
            if not args.no_memory and dev_name == "cpu":
                res = in_child(args, "ours", grid_name, dev_name)
                if "error" in res:
                    emit(dict(base, path="ours-process", note=res["error"]))
                else:
                    t = res["times"]
                    emit(dict(base, path="ours-process", **{f"{k}_s": v for k, v in t.items()},
                              unet_calls=sum(steps), peak_rss_mib=res["peak_rss_mib"],
                              note="one run in a fresh process (includes first-use kernel setup)"))
                if big:
                    emit(dict(base, path="reference", note="skipped: its materialised attention needs a "
                                                           "76800 x 76800 float32 score matrix (23.6 GB)"))
                elif not args.quick:
                    res = in_child(args, "reference", grid_name, dev_name)
                    emit(dict(base, path="reference-process", peak_rss_mib=res.get("peak_rss_mib", ""),
                              total_s=res.get("times", {}).get("total", ""),
                              note=res.get("error", "one run in a fresh process")))
        if dev_name.startswith("cuda") and not args.no_tolerance and not args.quick:
            tol = tolerance(torch.device(dev_name))
            emit(dict(grid="2mm-80x96x80", device=dev_name, path="tolerance", threads=args.threads,
                      unet_calls=tol["calls"],
                      note=f"demo model, its regime ({tol['regime']}), a vendored 2 mm scan: |bf16 + CUDA graphs - "
                           f"float32| inside the head: mean {tol['mean']:.2e}, 99.9th percentile {tol['p99.9']:.2e}, "
                           f"max {tol['max']:.2e} (tests/model/test_harmonize_cuda_path.py allows mean 0.01, "
                           "99.9th percentile 0.1)"))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\t".join(COLUMNS) + "\n")
            for row in rows:
                f.write(fmt_row(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
