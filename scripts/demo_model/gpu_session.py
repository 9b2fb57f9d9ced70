#!/usr/bin/env python
"""The prepared GPU session: resume training from the repository state, evaluate, benchmark, all in a budget.

A GPU is lent rarely and for minutes, so one command uses it fully and returns everything it learned:

1. train (``train_demo.run``) from the training state kept in the repository, on the GPU with the recipe's
   batches scaled up (``--batch-scale``), bf16 autocast and TF32, for the budget minus what the later steps
   need; write the bundle;
2. evaluate the bundle on held-out traveling subjects (``--test-pack``): SSIM / W1 to the same head for the
   input, histogram matching and the bundle's own inference regime (benchmarks/quality_simulated.py's
   functions; the full table is made on the CPU afterwards);
3. time harmonization (benchmarks/harmonize_speed.py; on CUDA at 2 mm and 1 mm with batches of 1, 4 and 16
   and the path without CUDA graphs beside it; on the CPU at 2 mm, or 2 mm and 1 mm with ``--full-speed``;
   ``--quick`` with ``--tiny``);
4. put the new state, the bundle, the printed log and a JSON record into ``--out`` as a few files (the
   device tool returns at most 8 files of 16 MiB each): ``state.tar``, ``bundle.tar``, ``record.json``,
   ``speed.txt``.

Every step checks the clock; a step that would overrun the budget is skipped and said so in the record.
On a CPU with ``--tiny`` the whole session runs in seconds (tests/scripts/test_gpu_session.py).

    python scripts/demo_model/gpu_session.py --pack PACK --val-pack VALPACK --test-pack TESTPACK \
        --out $OUT --minutes 9 [--batch-scale 8] [--state scripts/demo_model/state]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for path in (REPO, HERE, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def evaluate(bundle: Path, test_pack: Path, device: str, deadline: float, limit: int | None = None) -> dict:
    """Mean SSIM and W1 to the same head of input, histogram matching and the bundle's regime (all pairs
    of the test pack's subjects and sites, as far as the deadline allows)."""
    import numpy as np

    from hcld_bids.model.bundle import load_bundle
    from hcld_bids.model.harmonize import Harmonizer
    from quality_simulated import histogram_match, image_metrics, load_inputs

    images = load_inputs(test_pack)
    harmonizer = Harmonizer(load_bundle(bundle, device=device), device=device)
    sites_info = harmonizer.bundle.manifest["sites"]
    rows = []
    done = True
    for sub in sorted(images)[:limit]:
        for target in sorted(images[sub]):
            style = harmonizer.style_from_site(target)
            hist = sites_info[target]["intensity_histogram"]
            ref, ref_mask = images[sub][target]
            for source in sorted(images[sub]):
                if source == target:
                    continue
                if time.monotonic() > deadline:
                    done = False
                    break
                inp, mask = images[sub][source]
                outputs = {"input": inp, "histmatch": histogram_match(inp, mask, hist["edges"], hist["density"]),
                           "final": harmonizer.harmonize(inp, style, mask=mask)}
                for method, out in outputs.items():
                    m = image_metrics(out, ref, ref_mask, inp, mask, hist)
                    rows.append({"method": method, "subject": sub, "source": source, "target": target, **m})
    summary = {}
    for method in ("input", "histmatch", "final"):
        sel = [r for r in rows if r["method"] == method]
        if sel:
            summary[method] = {k: round(float(np.mean([r[k] for r in sel])), 4)
                               for k in ("ssim", "psnr", "w1_same_head", "structure_preservation")}
            summary[method]["n"] = len(sel)
    return {"complete": done, "regime": harmonizer.default_regime.to_dict(), "summary": summary}


def _tar(src: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(src.rglob("*")):
            if path.is_file() and not path.name.startswith(".") and path.name not in ("history.csv",
                                                                                       "latents.safetensors"):
                tar.add(path, arcname=str(path.relative_to(src)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, required=True)
    ap.add_argument("--val-pack", type=Path)
    ap.add_argument("--test-pack", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=9.0, help="the whole session's budget")
    ap.add_argument("--eval-minutes", type=float, default=1.5)
    ap.add_argument("--speed-minutes", type=float, default=1.5)
    ap.add_argument("--batch-scale", type=int, default=8)
    ap.add_argument("--state", type=Path, default=HERE / "state")
    ap.add_argument("--device", default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny networks, a check on the CPU")
    ap.add_argument("--full-speed", action="store_true", help="the speed benchmark at 2 mm and 1 mm")
    args = ap.parse_args(argv)

    import torch

    import train_demo

    start = time.monotonic()
    deadline = start + 60.0 * args.minutes
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "budget_minutes": args.minutes, "steps": {}}
    work = Path(tempfile.mkdtemp(prefix="hcld-gpu-session-"))
    state = work / "state"
    if args.state.is_dir():
        shutil.copytree(args.state, state)
    bundle = work / "bundle"

    # 1. training
    train_minutes = args.minutes - args.eval_minutes - args.speed_minutes - 0.5
    t0 = time.monotonic()
    train_args = ["--pack", str(args.pack), "--state", str(state), "--minutes", f"{max(0.2, train_minutes):.3f}",
                  "--device", device, "--batch-scale", str(args.batch_scale), "--bundle", str(bundle),
                  "--reserve-minutes", "0.3"]
    if args.val_pack:
        train_args += ["--val-pack", str(args.val_pack), "--val-limit", "8"]
    if args.tiny:
        train_args.append("--tiny")
    code = train_demo.main(train_args)
    record["steps"]["train"] = {"seconds": round(time.monotonic() - t0, 1), "exit": code}
    _tar(state, args.out / "state.tar")
    if bundle.is_dir():
        _tar(bundle, args.out / "bundle.tar")

    # 2. evaluation
    eval_deadline = min(deadline - 60.0 * args.speed_minutes, time.monotonic() + 60.0 * args.eval_minutes)
    if args.test_pack and bundle.is_dir() and time.monotonic() < eval_deadline:
        t0 = time.monotonic()
        record["quality"] = evaluate(bundle, args.test_pack, device, eval_deadline)
        record["steps"]["evaluate"] = {"seconds": round(time.monotonic() - t0, 1)}
    else:
        record["steps"]["evaluate"] = {"skipped": "no test pack, no bundle or no time left"}

    # 3. speed
    left = deadline - time.monotonic()
    if bundle.is_dir() and left > 30:
        t0 = time.monotonic()
        cmd = [sys.executable, str(REPO / "benchmarks" / "harmonize_speed.py"),
               "--devices", "cuda" if device.startswith("cuda") else "cpu"]
        if args.tiny:
            cmd += ["--quick"]
        elif device.startswith("cuda"):
            # the table in one run: both grids against the reference, the path with and without CUDA
            # graphs, throughput at batch 1, 4 and 16 with the peak GPU memory of each row, and the tolerance
            # of the GPU path against float32 on the demo model
            cmd += ["--grids", "2mm,1mm", "--batch-sizes", "1,4,16", "--compare-eager"]
        else:
            cmd += ["--grids", "2mm,1mm"] if args.full_speed else ["--grids", "2mm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, left - 15), cwd=REPO)
            (args.out / "speed.txt").write_text(proc.stdout + proc.stderr)
            record["steps"]["speed"] = {"seconds": round(time.monotonic() - t0, 1), "exit": proc.returncode}
        except subprocess.TimeoutExpired:
            record["steps"]["speed"] = {"skipped": "timed out inside the budget"}
    else:
        record["steps"]["speed"] = {"skipped": "no time left"}
    record["seconds"] = round(time.monotonic() - start, 1)
    (args.out / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(record, indent=1), flush=True)
    return 0 if code == 0 else code


if __name__ == "__main__":
    raise SystemExit(main())
