#!/usr/bin/env python
"""Resumable training of the demo model on packed model-grid inputs, on a CPU or a GPU, within a time budget.

The demo model improves over many sessions: every run resumes from one training state kept in the
repository (``scripts/demo_model/state`` by default), trains for the minutes it is given, evaluates, and
replaces the state. Nothing accumulates but the learning curve.

State folder::

    recipe.json            the networks and the training settings (fixed at the first run; --fresh starts over)
    stage1/checkpoint.safetensors   autoencoder, its EMA, discriminator, optimizers, step (the train level's engine)
    stage2/checkpoint.safetensors   diffusion UNet, its EMA, discriminator, optimizers, step
    curve.csv              learning curve: held-out reconstruction SSIM (stage 1) and held-out noise loss
                           (stage 2) against optimizer steps and cumulative wall time, per device
    record.json            every run: command, device, minutes, steps reached
    restoration/           the restoration prior's state (train_restoration.py: checkpoint.safetensors,
                           curve.csv); ``--bundle`` stores its network in the bundle

Stage 1 trains until its step target (``recipe.stage1.steps``), then stage 2 starts on latents encoded once
by the final (EMA) autoencoder; a budget that ends inside a stage stops after a checkpoint, and the next run
continues there. ``--bundle DIR`` writes a model bundle from the current state at the end (site prototypes
and histograms from the pack, the inference regime of the recipe, the training record and the curve).

Inputs: ``pack_inputs.py`` output (``inputs.npz`` + ``manifest_base.json``) for training, and a second pack
of held-out images for the curve (``--val-pack``). Needs PyTorch, numpy and safetensors only, so it runs on a
GPU node without the neuroimaging stack.

    PYTHONPATH=$PWD python scripts/demo_model/train_demo.py --pack PACK --val-pack VALPACK --minutes 60 \
        [--state scripts/demo_model/state] [--bundle OUT/bundle] [--device cuda] [--batch-scale 8] \
        [--exclude-site siteD]

``--exclude-site`` trains a leave-one-site-out model (for ``benchmarks/quality_reference_loso.py``): the
site's images and manifest entries are dropped and the stage-1 augmentation never renders it. Give it its own
``--state``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_STATE = REPO / "scripts" / "demo_model" / "state"

#: The demo recipe (benchmarks/RESULTS.md, "Autoencoder designs", "Learning curve of the demo recipe" and "An
#: autoencoder that starts from the best linear code"): the autoencoder starts from the principal components of
#: the training blocks (linear path) and reaches validation reconstruction 0.98 in 1,000 steps; stage 2's target
#: is far ahead so that every CPU run or GPU session continues it. The shipped demo bundle predates the linear
#: path (its own recipe is in its manifest).
RECIPE = {
    "autoencoder": {"channels": [32], "latent_channels": 4, "num_res_blocks": 2, "attention_levels": [False],
                    "norm_groups": 8, "patch_size": 2, "mid_attention": False, "linear_skip": True},
    "unet": {"channels": [32, 32, 32], "num_res_blocks": 1, "attention_levels": [False, False, True],
             "head_channels": 32, "norm_groups": 16, "patch_size": 2},
    "stage1": {"steps": 1000, "batch_size": 2, "lr": 5e-4, "patch_size": [64, 64, 64], "kl_weight": 1e-8,
               "ssim_weight": 0.5, "adv_weight": 0.0, "adv_warmup_epochs": 1e9, "ema_decay": 0.999,
               "augment_prob": 0.5, "warmup_steps": 100, "lr_min_ratio": 0.05, "checkpoint_every": 200},
    "stage2": {"steps": 20000, "batch_size": 4, "grad_accum": 1, "lr": 2e-4, "noise_weight": 1.0,
               "content_weight": 0.0, "style_weight": 0.0, "adv_weight": 0.0, "grad_weight": 0.0,
               "same_site_prob": 1.0, "prototype_condition_prob": 0.5, "ema_decay": 0.999, "warmup_steps": 200,
               "lr_min_ratio": 0.05, "checkpoint_every": 250, "latent_crop": 32, "timestep_focus": 250,
               "timestep_focus_prob": 0.75},
    # chosen on the validation heads (benchmarks/RESULTS.md, "Inference regimes"): dual conditions (DDIB) to 10 %
    # of the diffusion, 0.75 of the lost detail added back, the brain histogram calibrated to the target's (half
    # way toward a reference image's: "A reference image from a site the model never saw"), after the spectral
    # calibration onto the target's power spectrum ("Spectral calibration"), on the input restored half way by the
    # restoration prior of the state's restoration/ folder ("Restoration prior"; train_restoration.py), fully
    # for an input whose estimated noise is above 0.0225 ("A restoration weight from the image's noise"); toward a
    # reference image 0.875 of the lost detail ("Detail toward a reference image")
    "inference": {"kind": "dual", "strength": 0.1, "inversion_steps": 10, "sampling_steps": 10, "detail": 0.75,
                  "reference_detail": 0.875, "calibrate": True, "reference_calibration": 0.5, "spectrum": 1.0,
                  "restore": 0.5, "restore_noisy": 1.0, "noise_threshold": 0.0225},
    "eval_every": {"stage1": 100, "stage2": 500},
}

#: Tiny networks and step counts for a check of the script on a CPU (tests, CI).
TINY = {
    "autoencoder": {"channels": [8], "latent_channels": 2, "num_res_blocks": 1, "attention_levels": [False],
                    "norm_groups": 4, "patch_size": 2, "mid_attention": False, "linear_skip": True},
    "unet": {"channels": [8, 8], "num_res_blocks": 1, "attention_levels": [False, False], "head_channels": 8,
             "norm_groups": 4, "patch_size": 1},
    "stage1": {"steps": 4, "batch_size": 1, "patch_size": [16, 16, 16], "ema_decay": 0.9, "augment_prob": 0.5,
               "checkpoint_every": 2},
    "stage2": {"steps": 4, "batch_size": 2, "ema_decay": 0.9, "checkpoint_every": 2},
    "inference": {"kind": "sdedit", "strength": 0.3, "sampling_steps": 1, "detail": 1.0, "calibrate": True},
    "eval_every": {"stage1": 2, "stage2": 2},
}


# ----------------------------------------------------------------------------------------------- data

def load_pack(pack: Path):
    """Volumes (float32), brain masks (bool), sites and labels of a ``pack_inputs.py`` folder."""
    data = np.load(Path(pack) / "inputs.npz")
    shape = tuple(int(s) for s in data["shape"])
    stored = data["volumes"]
    scale = 1.0 / 255.0 if stored.dtype == np.uint8 else 1.0  # --uint8 packs hold round(255 x)
    volumes = [v.astype(np.float32) * np.float32(scale) for v in stored]
    masks = [m.astype(bool) for m in np.unpackbits(data["masks"], axis=-1, count=shape[-1])]
    labels = [str(s) for s in data["labels"]] if "labels" in data else [str(i) for i in range(len(volumes))]
    return volumes, masks, [str(s) for s in data["sites"]], labels


def save_pack(dest: Path, volumes, masks, sites, labels, uint8: bool = True) -> None:
    """Write ``inputs.npz`` as :func:`load_pack` reads it: intensities as round(255 x) in 8 bits (or float16),
    bit-packed masks, the grid, sites and labels."""
    stack = np.stack(volumes)
    np.savez_compressed(Path(dest) / "inputs.npz",
                        volumes=np.round(np.clip(stack, 0, 1) * 255).astype(np.uint8) if uint8 else stack.astype(np.float16),
                        masks=np.packbits(np.stack(masks), axis=-1), shape=np.array(stack.shape[1:]),
                        sites=np.array(sites), labels=np.array(labels))


def site_augment(volume: np.ndarray, rng: np.random.Generator, exclude: Sequence[str] = ()) -> np.ndarray:
    """Stage-1 augmentation: re-render the volume at one of the four simulated sites but ``exclude`` (half of
    the draws) or at a random new site (:func:`hcld_bids.simulate.random_site`)."""
    from hcld_bids.simulate import SITES, random_site, restyle_model_volume

    names = sorted(set(SITES) - set(exclude))
    effect = SITES[names[int(rng.integers(len(names)))]] if rng.random() < 0.5 else random_site("augment", rng)
    return restyle_model_volume(volume, effect, rng)


def exclude_sites(volumes, masks, sites, labels, base: dict, exclude: Sequence[str]):
    """Drop every image of the ``exclude`` sites from a loaded pack and from its manifest base (for a
    leave-one-site-out model: ``--exclude-site``). Unknown site names are an error."""
    if not exclude:
        return volumes, masks, sites, labels, base
    unknown = sorted(set(exclude) - set(sites))
    if unknown:
        raise SystemExit(f"--exclude-site {' '.join(unknown)}: not a site of the pack (sites: "
                         f"{', '.join(sorted(set(sites)))})")
    keep = [i for i, s in enumerate(sites) if s not in set(exclude)]
    if not keep:
        raise SystemExit("--exclude-site leaves no training image")
    base = copy.deepcopy(base)
    for name in exclude:
        base.get("sites", {}).pop(name, None)
        base.get("training", {}).get("data", {}).get("sites", {}).pop(name, None)
    data = base.get("training", {}).get("data")
    if data is not None:
        data["n_images"] = data["n_participants"] = len(keep)
        data["excluded_sites"] = sorted(exclude)
    if "subjects" in base.get("training", {}):
        kept = {labels[i].split("_")[0].removeprefix("sub-") for i in keep}
        base["training"]["subjects"] = [s for s in base["training"]["subjects"] if s in kept]
    pick = (lambda xs: [xs[i] for i in keep])
    return pick(volumes), pick(masks), pick(sites), pick(labels), base


# ----------------------------------------------------------------------------------------------- state

class State:
    """The training state folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.json"

    def exists(self) -> bool:
        return self.recipe_path.is_file()

    def recipe(self) -> dict:
        return json.loads(self.recipe_path.read_text())

    def create(self, recipe: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".gitignore").write_text("# per-step logs and the latent cache stay out of git\n"
                                              "*/history.csv\n*/latents.safetensors\n*.tmp*\n")
        _write_json(self.recipe_path, recipe)

    def record(self) -> dict:
        path = self.root / "record.json"
        return json.loads(path.read_text()) if path.is_file() else {"runs": []}

    def add_run(self, run: dict) -> None:
        record = self.record()
        record["runs"].append(run)
        _write_json(self.root / "record.json", record)

    def wall_seconds(self, stage: str) -> float:
        """Cumulative wall time spent training ``stage`` over all runs so far (from the curve)."""
        rows = self.curve()
        rows = [r for r in rows if r["stage"] == stage]
        return float(rows[-1]["wall_s"]) if rows else 0.0

    def curve(self) -> list[dict]:
        path = self.root / "curve.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def add_curve(self, row: dict) -> None:
        path = self.root / "curve.csv"
        fields = ["stage", "step", "wall_s", "device", "metric", "value"]
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fields, lineterminator="\n")
            if new:
                w.writeheader()
            w.writerow({k: row[k] for k in fields})


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def stage_configs(recipe: dict, batch_scale: int = 1, progress: bool = False, seed: int = 0):
    """The engine's configs of both stages from a recipe; ``batch_scale`` multiplies the batch sizes (GPU)."""
    from hcld_bids.model.training import AutoencoderTrainConfig, LDMTrainConfig

    s1 = dict(recipe["stage1"], compact_checkpoint=True)
    s1["batch_size"] = int(s1.get("batch_size", 2)) * batch_scale
    if s1.get("patch_size") is not None:
        s1["patch_size"] = tuple(s1["patch_size"])
    ae_cfg = AutoencoderTrainConfig(autoencoder=dict(recipe["autoencoder"]), seed=seed, progress=progress, **s1)
    s2 = dict(recipe["stage2"], compact_checkpoint=True)
    s2["batch_size"] = int(s2.get("batch_size", 1)) * batch_scale
    lat = int(recipe["autoencoder"]["latent_channels"])
    unet = dict(recipe["unet"], in_channels=2 * lat, out_channels=lat)
    ldm_cfg = LDMTrainConfig(unet=unet, seed=seed, progress=progress, **s2)
    return ae_cfg, ldm_cfg


def checkpoint_step(workdir: Path) -> int:
    """Optimizer steps a stage's checkpoint has reached (0 when there is none)."""
    from hcld_bids.model.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(workdir)
    return 0 if ckpt is None else int(ckpt["step"])


# ----------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def reconstruction_ssim(ae, volumes, masks, device) -> float:
    """Mean brain SSIM of ``D(E(x))`` against ``x`` over held-out volumes (the benchmarks' SSIM)."""
    from hcld_bids.model.evaluation import masked_ssim

    ae.eval()
    scores = []
    for vol, mask in zip(volumes, masks):
        x = torch.from_numpy(vol)[None, None].to(device)
        recon = ae.decode(ae.encode(x)).clamp(0, 1)[0, 0].float().cpu().numpy()
        scores.append(masked_ssim(recon * mask, vol, mask))
    return float(np.mean(scores))


@torch.no_grad()
def heldout_noise_loss(unet, schedule, latents, sites, prototypes, device, seed: int = 0) -> float:
    """Mean noise-prediction MSE of the UNet on held-out latents conditioned on their site's prototype, at
    eight fixed timesteps and fixed noise (comparable between evaluations)."""
    unet.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    T = schedule.num_train_timesteps
    for z, site in zip(latents, sites):
        if site not in prototypes:
            continue
        cond = prototypes[site].latent.to(device)
        for t in np.linspace(50, T - 50, 8).astype(int):
            noise = torch.randn(z.shape, generator=gen)
            zt = schedule.add_noise(z[None], noise[None], int(t)).to(device)
            eps = unet(zt, int(t), cond).float().cpu()
            losses.append(float(((eps - noise[None]) ** 2).mean()))
    return float(np.mean(losses)) if losses else float("nan")


# ----------------------------------------------------------------------------------------------- bundle

def add_missing_spectra(base: dict, volumes, masks, sites) -> None:
    """Give every site of a manifest base the power spectrum of the spectral calibration (packs made before it
    existed have none), computed from the pack's images."""
    from hcld_bids.model.spectrum import site_spectra

    entries = base.get("sites") or {}
    missing = [s for s, e in entries.items() if "power_spectrum" not in e]
    if missing:
        keep = [i for i, s in enumerate(sites) if s in missing]
        spectra = site_spectra([volumes[i] for i in keep], [masks[i] for i in keep], [sites[i] for i in keep])
        for site in missing:
            entries[site]["power_spectrum"] = spectra[site]


def write_bundle(dest: Path, state: State, ae, scale_factor: float, unet, schedule, prototypes, base: dict,
                 extra_training: dict) -> None:
    from hcld_bids.model.bundle import save_bundle
    from hcld_bids.model.harmonize import Regime

    recipe = state.recipe()
    record = state.record()
    training = dict(base.get("training", {}))
    training.update({
        "how": "scripts/demo_model/train_demo.py (hcld_bids.model.training, the train level's engine) on the "
               "train level's preprocessed inputs, resumed from the training state kept in the repository "
               "(scripts/demo_model/state) over one or more runs",
        "recipe": recipe,
        "runs": record["runs"],
        "stage1": {"steps_done": checkpoint_step(state.root / "stage1"),
                   "wall_seconds": round(state.wall_seconds("stage1"), 1)},
        "stage2": {"steps_done": checkpoint_step(state.root / "stage2"),
                   "wall_seconds": round(state.wall_seconds("stage2"), 1)},
        "learning_curve": state.curve(),
        "torch": torch.__version__,
        **extra_training,
    })
    inference = dict(recipe.get("inference", {}))
    restoration = None
    if (state.root / "restoration").is_dir():
        from train_restoration import load_network

        restoration = load_network(state.root / "restoration")
    if restoration is None and Regime.from_dict(inference).restores:
        print(f"{state.root / 'restoration'}: no restoration prior trained; the bundle's inference runs without "
              "one (restore 0)")
        inference.update(restore=0.0, restore_noisy=None)
    manifest = {**base, "name": dest.name, "training": training, "inference": inference}
    net, record = restoration if restoration is not None else (None, None)
    save_bundle(dest, ae.cpu(), unet.cpu(), scale_factor, prototypes, manifest, schedule=schedule, overwrite=True,
                restoration=net, restoration_training=record)


# ----------------------------------------------------------------------------------------------- main

def run(args) -> int:
    from hcld_bids.model.training import train_autoencoder, train_ldm

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    deadline = started + 60.0 * args.minutes
    state = State(args.state)
    if state.exists() and args.fresh:
        import shutil

        shutil.rmtree(state.root)
    if not state.exists():
        recipe = copy.deepcopy(TINY if args.tiny else RECIPE)
        for section, values in (args.recipe_json or {}).items():
            recipe.setdefault(section, {}).update(values)
        state.create(recipe)
    elif args.recipe_json:
        raise SystemExit(f"{state.recipe_path} exists: the recipe is fixed for a state; use --fresh (or another "
                         f"--state) to train another recipe")
    recipe = state.recipe()
    volumes, masks, sites, labels = load_pack(args.pack)
    base = json.loads((Path(args.pack) / "manifest_base.json").read_text())
    volumes, masks, sites, _, base = exclude_sites(volumes, masks, sites, labels, base, args.exclude_site)
    add_missing_spectra(base, volumes, masks, sites)
    augment = functools.partial(site_augment, exclude=tuple(args.exclude_site))
    val_volumes, val_masks, val_sites, _ = load_pack(args.val_pack) if args.val_pack else ([], [], [], [])
    if args.val_limit:
        val_volumes, val_masks, val_sites = (v[: args.val_limit] for v in (val_volumes, val_masks, val_sites))
    ae_cfg, ldm_cfg = stage_configs(recipe, args.batch_scale, progress=args.progress, seed=args.seed)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"{len(volumes)} training volumes {volumes[0].shape} from {len(set(sites))} sites; {len(val_volumes)} "
          f"held-out; device {dev_name}; budget {args.minutes:g} min; state {state.root}", flush=True)
    run_info = {"command": " ".join([Path(__file__).name, *getattr(args, "argv", sys.argv[1:])]), "device": dev_name,
                "batch_scale": args.batch_scale, "minutes_budget": args.minutes,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    reserve = 60.0 * args.reserve_minutes  # time kept for the prototypes, the bundle and the last evaluation

    # ---------------------------------------------------------------- stage 1
    wd1 = state.root / "stage1"
    ae_result = None
    eval1 = int(recipe["eval_every"]["stage1"])
    while checkpoint_step(wd1) < ae_cfg.steps and time.monotonic() < deadline - reserve and 1 in args.stages:
        done = checkpoint_step(wd1)
        chunk = min(eval1 - done % eval1, ae_cfg.steps - done)
        t0 = time.monotonic()
        ae_result = train_autoencoder(volumes, ae_cfg, wd1, device=device, stop_after_steps=chunk,
                                      time_limit_s=max(1.0, deadline - reserve - time.monotonic()),
                                      augment=augment)
        wall = state.wall_seconds("stage1") + time.monotonic() - t0
        step = checkpoint_step(wd1)
        row = {"stage": "stage1", "step": step, "wall_s": round(wall, 1), "device": dev_name,
               "metric": "heldout_recon_ssim", "value": float("nan")}
        if val_volumes:
            row["value"] = round(reconstruction_ssim(ae_result.autoencoder, val_volumes, val_masks, device), 4)
        state.add_curve(row)
        print(f"stage 1: step {step}/{ae_cfg.steps}, {wall / 60:.1f} min in all, held-out reconstruction SSIM "
              f"{row['value']}", flush=True)
    run_info["stage1_steps"] = checkpoint_step(wd1)

    # ---------------------------------------------------------------- stage 2
    wd2 = state.root / "stage2"
    stage2_ready = checkpoint_step(wd1) >= ae_cfg.steps
    ldm_result = None
    if stage2_ready and (2 in args.stages or args.bundle):
        if ae_result is None:  # rebuild the final autoencoder (EMA) from the checkpoint without training
            ae_result = train_autoencoder(volumes, ae_cfg, wd1, device=device, stop_after_steps=0,
                                          augment=augment)
        ae, sf = ae_result.autoencoder, ae_result.scale_factor
        eval2 = int(recipe["eval_every"]["stage2"])
        val_latents = None
        first = True
        while (first or (checkpoint_step(wd2) < ldm_cfg.steps and time.monotonic() < deadline - reserve
                         and 2 in args.stages)):
            done = checkpoint_step(wd2)
            chunk = min(eval2 - done % eval2, ldm_cfg.steps - done)
            if not (2 in args.stages) or time.monotonic() >= deadline - reserve or done >= ldm_cfg.steps:
                chunk = 0
            t0 = time.monotonic()
            ldm_result = train_ldm(volumes, sites, ldm_cfg, wd2, autoencoder=ae, scale_factor=sf, masks=masks,
                                   device=device, stop_after_steps=chunk,
                                   time_limit_s=max(1.0, deadline - reserve - time.monotonic()))
            if chunk:
                wall = state.wall_seconds("stage2") + time.monotonic() - t0
                row = {"stage": "stage2", "step": checkpoint_step(wd2), "wall_s": round(wall, 1), "device": dev_name,
                       "metric": "heldout_noise_mse", "value": float("nan")}
                if val_volumes:
                    if val_latents is None:
                        from hcld_bids.model.prototypes import encode_scaled

                        val_latents = [encode_scaled(ae, v, sf, device)[0].cpu() for v in val_volumes]
                    row["value"] = round(heldout_noise_loss(ldm_result.unet, ldm_result.schedule, val_latents,
                                                            val_sites, ldm_result.prototypes, device), 5)
                state.add_curve(row)
                print(f"stage 2: step {row['step']}/{ldm_cfg.steps}, {wall / 60:.1f} min in all, held-out noise "
                      f"MSE {row['value']}", flush=True)
            first = False
            if chunk == 0:
                break
        run_info["stage2_steps"] = checkpoint_step(wd2)
    run_info["minutes_used"] = round((time.monotonic() - started) / 60.0, 2)
    state.add_run(run_info)

    if args.bundle:
        if ldm_result is None:
            print("no bundle: stage 1 has not reached its last step yet", flush=True)
            return 3
        write_bundle(Path(args.bundle), state, ae_result.autoencoder, ae_result.scale_factor, ldm_result.unet,
                     ldm_result.schedule, ldm_result.prototypes, base, {"device": dev_name})
        print(f"bundle written to {args.bundle}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, required=True, help="training pack (pack_inputs.py)")
    ap.add_argument("--val-pack", type=Path, help="held-out pack for the learning curve")
    ap.add_argument("--val-limit", type=int, default=None, help="use the first N held-out images only")
    ap.add_argument("--state", type=Path, default=DEFAULT_STATE, help="training state folder (default: %(default)s)")
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock budget of this run")
    ap.add_argument("--reserve-minutes", type=float, default=1.0,
                    help="part of the budget kept for the final evaluation and the bundle")
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--bundle", type=Path, help="write a model bundle from the state at the end")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--batch-scale", type=int, default=1, help="multiply the recipe's batch sizes (GPU)")
    ap.add_argument("--fresh", action="store_true", help="delete the state and start over")
    ap.add_argument("--tiny", action="store_true", help="tiny networks and steps (a check of the script)")
    ap.add_argument("--recipe-json", type=json.loads, default=None,
                    help="a new state's recipe changes, e.g. '{\"stage1\": {\"steps\": 100}}'")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exclude-site", nargs="+", default=[], metavar="SITE",
                    help="leave these sites' images out of training (and out of the stage-1 site augmentation): "
                         "a leave-one-site-out model, e.g. for benchmarks/quality_reference_loso.py")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the record names this run's own arguments
    from hcld_bids.model import CheckpointError

    try:
        return run(args)
    except CheckpointError as err:  # a state that was killed mid-write, is partial or of another design
        print(f"train_demo.py: error: {err}", file=sys.stderr)
        return 65


if __name__ == "__main__":
    raise SystemExit(main())
