"""The step loop shared by both stages: epochs and data order, per-step random generators, gradient
accumulation bookkeeping, learning-rate schedule, mixed precision, checkpoints, CSV log and progress bar.

Every random draw of a step (data order, patch positions, noise, timesteps, conditions) comes from a
generator seeded by ``(seed, step, micro-batch, rank, purpose)``, so a resumed run draws exactly what the
uninterrupted run would have drawn; the checkpoint still stores the global RNG states for anything else.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import CheckpointError
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint, set_rng_state
from .config import LoopConfig
from .distributed import DistContext

HISTORY = "history.csv"
#: Settings that may change between a checkpoint and its resumption: how long and how the work is cut into
#: batches and precision (a CPU state resumed on a GPU with larger batches), not what is learned.
RESUMABLE_CHANGES = ("steps", "epochs", "checkpoint_every", "progress", "batch_size", "grad_accum", "amp",
                     "amp_dtype", "compact_checkpoint")


def _compact_optimizer_state(state: dict) -> dict:
    """An optimizer state dict with its floating-point per-parameter tensors (Adam's moments) in bfloat16;
    ``Optimizer.load_state_dict`` casts them back to the parameters' dtype."""
    out = dict(state)
    out["state"] = {k: {name: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() and v.ndim > 0
                               else v) for name, v in per_param.items()}
                    for k, per_param in state["state"].items()}
    return out


class WarmupCosine:
    """Learning-rate factor: linear warm-up, then constant (``min_ratio = 1``) or cosine decay."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.min_ratio >= 1.0:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _seed(*parts) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class CsvLog:
    """Append-only CSV of per-step values; on resume, rows at or after the resume step are dropped."""

    def __init__(self, path: Path, resume_step: int, enabled: bool) -> None:
        self.path, self.enabled, self.fields = path, enabled, None
        if not enabled:
            return
        if resume_step > 0 and path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields = list(rows[0].keys()) if rows else None
            keep = [r for r in rows if int(r["step"]) < resume_step]
            with open(path, "w", newline="") as f:
                if self.fields:
                    w = csv.DictWriter(f, self.fields)
                    w.writeheader()
                    w.writerows(keep)
        elif path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.is_file() or self.fields is None
        if self.fields is None:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


class TrainingRun:
    """Base class of a stage; subclasses implement :meth:`train_step` and list their stateful parts."""

    stage = "stage"

    def __init__(self, cfg: LoopConfig, workdir, ctx: DistContext, n_items: int) -> None:
        if n_items < 1:
            raise ValueError("training needs at least one item")
        self.cfg, self.ctx, self.n_items = cfg, ctx, n_items
        self.workdir = Path(workdir)
        self.device = ctx.device
        per_step = cfg.batch_size * cfg.grad_accum * ctx.world_size
        self.steps_per_epoch = max(1, math.ceil(n_items / per_step))
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.steps_per_epoch
        self.step = 0
        use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = getattr(torch, cfg.amp_dtype)
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and self.amp_dtype == torch.float16)
        self.models: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        #: name of the model (in :attr:`models`) whose weights get an exponential moving average
        self.ema_model: str | None = None
        self.ema: dict[str, torch.Tensor] | None = None

    # -------------------------------------------------------------------------------- randomness

    def generator(self, step: int, micro: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(_seed(self.cfg.seed, self.stage, step, micro, self.ctx.rank, purpose))

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def item_indices(self, step: int, micro: int) -> list[int]:
        """Items of this process for one micro-batch: epoch-wise shuffled, disjoint across processes."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.n_items, generator=torch.Generator().manual_seed(
            _seed(self.cfg.seed, self.stage, "epoch", epoch))).tolist()
        b, world = self.cfg.batch_size, self.ctx.world_size
        start = ((k * self.cfg.grad_accum + micro) * world + self.ctx.rank) * b
        return [perm[(start + j) % self.n_items] for j in range(b)]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def lr_schedule_factor(self) -> "WarmupCosine":
        return WarmupCosine(self.cfg.warmup_steps, self.total_steps, self.cfg.lr_min_ratio)

    def lr_schedule(self, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_schedule_factor())

    def optimizer_step(self, name: str, model: torch.nn.Module) -> None:
        opt = self.optimizers[name]
        if self.cfg.grad_clip:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.scaler.step(opt)
        if name in self.schedulers:
            self.schedulers[name].step()
        if name == self.ema_model and self.cfg.ema_decay:
            self._update_ema(model)

    # -------------------------------------------------------------------------------- EMA

    @torch.no_grad()
    def _update_ema(self, model: torch.nn.Module) -> None:
        from .distributed import unwrap

        state = unwrap(model).state_dict()
        if self.ema is None:
            self.ema = {k: v.detach().clone().float() for k, v in state.items()}
            return
        # the usual warm-up of the decay, so that early EMA weights are not dominated by the initialisation
        decay = min(float(self.cfg.ema_decay), (1.0 + self.step) / (10.0 + self.step))
        for k, v in state.items():
            if v.dtype.is_floating_point:
                self.ema[k].lerp_(v.float(), 1.0 - decay)
            else:
                self.ema[k].copy_(v)

    def averaged_state(self) -> dict[str, torch.Tensor] | None:
        """The EMA weights of :attr:`ema_model` (``None`` without EMA or before the first step)."""
        return None if self.ema is None else {k: v.clone() for k, v in self.ema.items()}

    # -------------------------------------------------------------------------------- state

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def _payload(self) -> dict:
        from .distributed import unwrap

        return {
            "stage": self.stage,
            "step": self.step,
            "config": self.config_dict(),
            "models": {k: unwrap(m).state_dict() for k, m in self.models.items()},
            "optimizers": {k: (_compact_optimizer_state(o.state_dict()) if self.cfg.compact_checkpoint
                               else o.state_dict()) for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "extra": self.extra_state(),
            "ema": self.ema if self.ema is not None else {},
        }

    def _restore(self, ckpt: dict) -> None:
        from .distributed import unwrap

        path = checkpoint_path(self.workdir)
        if ckpt.get("stage") != self.stage:
            raise CheckpointError(f"{path}: checkpoint of stage {ckpt.get('stage')!r}, not {self.stage!r}; use "
                                  f"another work directory")
        old, new = ckpt.get("config", {}), self.config_dict()
        keys = [k for k in new if k not in RESUMABLE_CHANGES]
        changed = [k for k in keys if k in old and old[k] != new[k]]
        if changed:
            raise CheckpointError(f"{path}: the configuration changed since the checkpoint ({', '.join(changed)}); "
                                  f"restore it or start in a new work directory")
        try:
            for k, m in self.models.items():
                unwrap(m).load_state_dict(ckpt["models"][k])
            for k, o in self.optimizers.items():
                o.load_state_dict(ckpt["optimizers"][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(ckpt["schedulers"][k])
                # LambdaLR restores its schedule object's fields too, i.e. the step target of the run that wrote
                # the checkpoint; a changed target ("steps" is a resumable change) must reshape the schedule
                s.lr_lambdas = [self.lr_schedule_factor() for _ in s.lr_lambdas]
                for group, base, factor in zip(s.optimizer.param_groups, s.base_lrs, s.lr_lambdas):
                    group["lr"] = base * factor(s.last_epoch)
            self.scaler.load_state_dict(ckpt["scaler"])
            ema = ckpt.get("ema") or None
            if ema is not None:
                own = unwrap(self.models[self.ema_model]).state_dict() if self.ema_model else {}
                if set(ema) != set(own) or any(ema[k].shape != own[k].shape for k in own):
                    raise ValueError("EMA weights of another network")
            self.ema = None if ema is None else {k: v.to(self.device).float() for k, v in ema.items()}
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: the checkpoint does not fit this network ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]}); use another work directory or delete it to "
                                  f"start the stage afresh") from None
        self.load_extra_state(ckpt.get("extra", {}))
        set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])

    def save(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.workdir, self._payload())
        self.ctx.barrier()

    # -------------------------------------------------------------------------------- loop

    def train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def run(self, stop_after_steps: int | None = None, time_limit_s: float | None = None) -> bool:
        """Train from the checkpoint in the work directory (if any) until the last step; return whether the
        stage is complete. ``stop_after_steps`` / ``time_limit_s`` end this call early, with a checkpoint."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ckpt = load_checkpoint(self.workdir)
        if ckpt is not None:
            self._restore(ckpt)
        if stop_after_steps == 0:  # only restore (e.g. to rebuild the trained networks from the checkpoint)
            return self.step >= self.total_steps
        log = CsvLog(self.workdir / HISTORY, self.step, self.ctx.is_main)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, dynamic_ncols=True,
                   disable=not (self.cfg.progress and self.ctx.is_main))
        started = time.monotonic()
        done_here = 0
        try:
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                values = self.ctx.mean(self.train_step(self.step))
                lr = next(iter(self.optimizers.values())).param_groups[0]["lr"]
                row = {"step": self.step, "epoch": round(self.epoch_of(self.step), 4), "lr": lr, **values,
                       "seconds": round(time.perf_counter() - t0, 4)}
                log.write(row)
                self.step += 1
                done_here += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "l1", "noise")})
                out_of_time = time_limit_s is not None and time.monotonic() - started > time_limit_s
                stop = (stop_after_steps is not None and done_here >= stop_after_steps) or out_of_time
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps or stop:
                    self.save()
                if stop:
                    break
        finally:
            bar.close()
        return self.step >= self.total_steps
