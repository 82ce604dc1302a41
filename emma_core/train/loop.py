"""The generic training loop: a trainable task (nn.Module: batch + generator -> loss) over a dataset.

    result = train(task, train_set, config, run_dir, val_set=held_out)

The task (objective.EMMATask, or any module with the same few members) provides
    forward(batch, generator) -> scalar loss     the only place randomness is drawn (from `generator`)
    validation_losses(batch) -> [B] losses        deterministic (fixed noise/timestep per sample)
    collate(samples) -> batch                     samples come from dataset.sample(i)
    trainable                                     the nn.Module the optimiser trains and checkpoints save
so the same loop serves EMMA modules, UMM's projector and Emu-style quality tuning.

What it does: AdamW (paper defaults), linear warm-up (5 % of the run unless set), an optional EMA of the trained
weights (validated, previewed and saved in their place), batches from one aspect bucket each, gradient clipping, fp16 autocast + GradScaler on
CUDA, gradient accumulation, DDP when torch.distributed is initialised (torchrun), validation at intervals
with early stopping, atomic checkpoints with exact resume (weights, optimiser, scheduler, scaler, every
rank's generator and global RNG states, the step counter and the position in the data order), and the log.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .curve import render_loss_curve
from .schedule import cosine_factor, warmup_factor
from .trainlog import TrainLog

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000                 # optimiser steps
    batch_size: int = 4               # per process and micro-step; global batch = this x processes x grad_accum
    grad_accum: int = 1
    lr: float = 1e-4                  # paper: AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_iters: int = -1            # -1: 5 % of the steps (the paper's 1000 of 2000 steps would be half a
                                      # home run); warm-up goes linearly from warmup_start x lr to lr
    warmup_start: float = 0.1
    decay_to: float = 1.0             # after warm-up, cosine decay of the lr to this fraction at the last step
                                      # (1.0 = constant, the paper's schedule)
    grad_clip: float = 1.0            # paper: gradient clipping 1.0
    precision: str = "auto"           # auto = fp16 autocast on CUDA (paper: fp16), fp32 on CPU; or fp16/bf16/fp32
    val_every: int = 0                # validate every N steps (and at the end); 0 = never
    early_stopping_patience: int = 0  # stop after N validations without improvement; 0 = never
    early_stopping_min_delta: float = 0.0
    checkpoint_every: int = 500       # 0 = only at the end
    preview_every: int = 0            # sample pictures every N steps (and at the end); 0 = never
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    ema_decay: float = 0.0            # EMA of the trained weights (e.g. 0.999, ramped in as (1+t)/(10+t)); 0 = off

    def warmup(self) -> int:
        """The warm-up in optimiser steps (warmup_iters, or 5 % of the steps when it is -1)."""
        return round(0.05 * self.steps) if self.warmup_iters < 0 else self.warmup_iters


@dataclass
class TrainResult:
    step: int
    resumed_from: Optional[int]
    stopped_early: bool
    best_val_loss: Optional[float]
    best_step: Optional[int]
    records: list = field(default_factory=list)
    curve: object = None               # PIL image


class BucketOrder:
    """Batches that each come from one group (aspect bucket): per epoch, every group is shuffled and cut into
    batches of `batch` (a group's last batch filled from its own start), and the batches are shuffled. The
    position (epoch, batch) is all a resume needs; take(n) hands out one whole batch."""

    def __init__(self, groups: list[list[int]], batch: int, seed: int, epoch: int = 0, offset: int = 0):
        self.groups, self.batch, self.seed, self.epoch, self.offset = groups, batch, seed, epoch, offset
        self.count = sum(len(g) for g in groups)
        self._batches = None

    def _epoch_batches(self) -> list[list[int]]:
        if self._batches is None or self._batches[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            batches = []
            for group in self.groups:
                order = [group[i] for i in torch.randperm(len(group), generator=g).tolist()]
                for start in range(0, len(order), self.batch):
                    chunk = order[start:start + self.batch]
                    while len(chunk) < self.batch:
                        chunk += order[:self.batch - len(chunk)]
                    batches.append(chunk)
            self._batches = (self.epoch, [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()])
        return self._batches[1]

    def take(self, n: int) -> list[int]:
        if n != self.batch:
            raise ValueError(f"bucketed batches hold {self.batch} samples, not {n}")
        batches = self._epoch_batches()
        out = batches[self.offset]
        self.offset += 1
        if self.offset >= len(batches):
            self.epoch, self.offset = self.epoch + 1, 0
        return list(out)

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "count": self.count, "seed": self.seed, "buckets": True,
                "batch": self.batch, "batches": len(self._epoch_batches())}


def data_order(train_set, batch: int, seed: int, epoch: int = 0, offset: int = 0):
    """BucketOrder when the set's samples come in several sizes (shape_groups), else DataOrder."""
    groups = train_set.shape_groups() if hasattr(train_set, "shape_groups") else None
    if groups and len(groups) > 1:
        return BucketOrder(groups, batch, seed, epoch, offset)
    return DataOrder(len(train_set), seed, epoch, offset)


class DataOrder:
    """Epoch-wise permutations from (seed, epoch): the position (epoch, offset) is all a resume needs."""

    def __init__(self, count: int, seed: int, epoch: int = 0, offset: int = 0):
        self.count, self.seed, self.epoch, self.offset = count, seed, epoch, offset
        self._perm = None

    def _permutation(self) -> list[int]:
        if self._perm is None or self._perm[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            self._perm = (self.epoch, torch.randperm(self.count, generator=g).tolist())
        return self._perm[1]

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            perm = self._permutation()
            k = min(n - len(out), self.count - self.offset)
            out += perm[self.offset:self.offset + k]
            self.offset += k
            if self.offset >= self.count:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "count": self.count, "seed": self.seed}


def _to_device(batch: dict, device: torch.device) -> dict:
    out = dict(batch)
    for key, value in batch.items():
        if torch.is_tensor(value):
            out[key] = value.to(device)
        elif hasattr(value, "tensors"):  # Features
            out[key] = type(value)(value.kind, {k: v.to(device) for k, v in value.tensors.items()})
    return out


def _precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None, "no": None}[name]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_across(value: float, device) -> float:
    rank, world = _world()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def evaluate(task, dataset, batch_size: int, device=None) -> Optional[float]:
    """Mean held-out loss over the whole set (split across processes under DDP), deterministic."""
    if dataset is None or len(dataset) == 0:
        return None
    device = device or task.device
    rank, world = _world()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    mine = list(range(rank, len(dataset), world))
    if hasattr(dataset, "shape_groups"):  # one bucket per batch, so each batch stacks
        bucket = {i: b for b, group in enumerate(dataset.shape_groups()) for i in group}
        mine.sort(key=lambda i: (bucket[i], i))
    was_training = task.training
    task.eval()
    try:
        for chunk in _chunks(mine, batch_size, lambda i: bucket[i] if hasattr(dataset, "shape_groups") else 0):
            batch = _to_device(task.collate([dataset.sample(i) for i in chunk]), device)
            losses = task.validation_losses(batch)
            total[0] += losses.double().sum()
            total[1] += losses.numel()
    finally:
        task.train(was_training)
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1])


def _chunks(indices: list[int], size: int, key) -> list[list[int]]:
    """Consecutive runs of at most `size` indices with the same key."""
    out: list[list[int]] = []
    for i in indices:
        if out and len(out[-1]) < size and key(out[-1][0]) == key(i):
            out[-1].append(i)
        else:
            out.append([i])
    return out


class EMA:
    """An exponential moving average of the trained weights, ramped in ((1 + t) / (10 + t) caps the decay early
    on, so a short run's average is not stuck near the initial weights)."""

    def __init__(self, params: list, decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone().float() for p in params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - d)

    @contextlib.contextmanager
    def swapped_in(self):
        """The EMA weights in the trained parameters' place for the duration (validation, previews, saving)."""
        kept = [p.detach().clone() for p in self.params]
        try:
            self.copy_to_params()
            yield
        finally:
            with torch.no_grad():
                for k, p in zip(kept, self.params):
                    p.copy_(k)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict:
        return {"shadow": [s.cpu() for s in self.shadow], "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved)
        self.updates = int(state["updates"])


def adamw(params: list, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has it for the parameters' device (CUDA; CPU from torch
    2.4): the same update in one pass over the weights. On CPU the multi-tensor ("foreach") step of a 50 M
    parameter model costs 0.25 s, the fused one 0.05 s (measured on 2 cores); with a large trainable set
    that is a third of the step. Older torch builds get the multi-tensor step, and the log says so."""
    kwargs = dict(lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError) as err:  # the device or dtype has no fused kernel here
        log.info("EMMA training: fused AdamW unavailable (%s); using the multi-tensor step", err)
        return torch.optim.AdamW(params, **kwargs)


@dataclass
class _Run:
    """One run's state: what a checkpoint holds and a resume restores, plus what the steps share."""
    task: torch.nn.Module
    config: TrainConfig
    config_dict: dict                  # the config as plain values (checkpoints and summary.json)
    run_dir: Path
    rank: int
    world: int
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    amp_dtype: Optional[torch.dtype]
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    order: object                      # DataOrder or BucketOrder
    tlog: TrainLog
    ema: Optional[EMA] = None
    model: torch.nn.Module = None      # the task, or its DistributedDataParallel wrapper
    step: int = 0
    resumed_from: Optional[int] = None
    best: float = math.inf
    best_step: Optional[int] = None
    bad: int = 0                       # validations since the best one
    stopped_early: bool = False

    @property
    def device(self) -> torch.device:
        return self.task.device

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.world * self.config.grad_accum

    def best_val(self) -> Optional[float]:
        return None if math.isinf(self.best) else self.best

    def averaged(self):
        """The weights to validate, preview and save: the EMA when on."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()


def _start(task, train_set, config: TrainConfig, run_dir) -> _Run:
    rank, world = _world()
    device = task.device
    params = [p for p in task.trainable.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the task has no trainable parameters")
    optimizer = adamw(params, config)
    warmup = config.warmup()
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_factor(s, warmup, config.warmup_start)
        * cosine_factor(s, warmup, config.steps, config.decay_to))
    amp_dtype = _precision(config.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16 and device.type == "cuda")
    return _Run(task, config, {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
                Path(run_dir), rank, world, params, optimizer, scheduler, amp_dtype, scaler,
                torch.Generator(device=device).manual_seed(config.seed * 1000 + rank),
                data_order(train_set, config.batch_size * world * config.grad_accum, config.seed),
                TrainLog(run_dir, enabled=rank == 0), EMA(params, config.ema_decay) if config.ema_decay > 0 else None)


def _resume(run: _Run, train_set, state: Optional[dict]) -> None:
    """Restore the run from checkpoint `state`; without one, clear the log an earlier run left."""
    if state is None:
        if run.rank == 0 and run.run_dir.exists():
            for name in ("log.csv", "log.jsonl"):
                (run.run_dir / name).unlink(missing_ok=True)
        return
    if state.get("world_size", 1) != run.world:
        raise ValueError(f"{run.run_dir} was trained with {state.get('world_size')} processes; resume it with the "
                         f"same number (now {run.world}) or start a new run folder")
    run.task.trainable.load_state_dict(state["trainable"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.generator.set_state(state["generators"][run.rank].cpu())
    ckpt.set_rng_state(state["rng"][run.rank])
    run.order = data_order(train_set, run.global_batch, run.config.seed, state["order"]["epoch"],
                           state["order"]["offset"])
    _check_same_order(run, state["order"])
    if run.ema is not None:
        if not state.get("ema"):
            raise ValueError(f"{run.run_dir} was trained without EMA; resume it with ema_decay 0 or start a new run "
                             "folder")
        run.ema.load_state_dict(state["ema"])
    elif state.get("ema"):
        log.warning("EMMA training: %s was trained with EMA (decay %s); resuming without it drops the average: the "
                    "file will hold the last weights", run.run_dir, state.get("config", {}).get("ema_decay"))
    saved = state.get("config") or {}
    if "warmup_iters" in saved and "steps" in saved:
        before = TrainConfig(steps=int(saved["steps"]), warmup_iters=int(saved["warmup_iters"])).warmup()
        if before != run.config.warmup():
            log.warning("EMMA training: %s warmed up over %d steps, now %d: the learning rate from step %d on "
                        "follows the new warm-up (set the warm-up to %d to keep the old one)", run.run_dir, before,
                        run.config.warmup(), int(state["step"]), before)
    if state["order"]["count"] != len(train_set):
        raise ValueError(f"the training set has {len(train_set)} samples but the checkpoint was made with "
                         f"{state['order']['count']}: the dataset or cache changed; start a new run folder")
    run.step = run.resumed_from = int(state["step"])
    run.best = state["best"]["val"] if state["best"]["val"] is not None else math.inf
    run.best_step, run.bad = state["best"]["step"], state["best"]["bad"]
    if run.rank == 0:
        run.tlog.restore(state["records"])
    log.info("EMMA training: resumed %s at step %d", run.run_dir, run.step)


def _check_same_order(run: _Run, saved: dict) -> None:
    """A resume must continue the same data order: bucketed batches (their size, their count) or the plain one."""
    bucketed = isinstance(run.order, BucketOrder)
    now = run.order.state()
    if bool(saved.get("buckets")) != bucketed or (bucketed and (
            saved.get("batch") != now["batch"] or saved.get("batches", now["batches"]) != now["batches"])):
        said = (f"with aspect buckets (batches of {saved.get('batch')})" if saved.get("buckets")
                else "without aspect buckets")
        raise ValueError(f"{run.run_dir} was trained {said}; now the data comes "
                         f"{'in buckets, batches of ' + str(now['batch']) if bucketed else 'without buckets'}: resume "
                         "with the same aspect buckets, batch size and gradient accumulation, or start a new run "
                         "folder")


def _step(run: _Run, train_set) -> dict:
    """One optimiser step (grad_accum micro-batches per process); its record for the log."""
    config, task, device, world, rank, amp_dtype = run.config, run.task, run.device, run.world, run.rank, run.amp_dtype
    run.optimizer.zero_grad(set_to_none=True)
    indices = run.order.take(run.global_batch)
    loss_sum = 0.0
    for micro in range(config.grad_accum):
        chunk = indices[(micro * world + rank) * config.batch_size:(micro * world + rank + 1) * config.batch_size]
        batch = _to_device(task.collate([train_set.sample(i) for i in chunk]), device)
        sync = contextlib.nullcontext() if (world == 1 or micro == config.grad_accum - 1) else run.model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = run.model(batch, run.generator)
            run.scaler.scale(loss / config.grad_accum).backward()
        loss_sum += float(loss.detach())
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip if config.grad_clip > 0 else math.inf)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update()
    run.step += 1
    return {"step": run.step, "loss": _mean_across(loss_sum / config.grad_accum, device),
            "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm)}


def _validate(run: _Run, val_set, record: dict, on_best) -> None:
    """The held-out loss into `record`; keeps the best one and decides an early stop."""
    config = run.config
    with run.averaged():
        val = evaluate(run.task, val_set, config.batch_size, run.device)
        record["val_loss"] = val
        if val < run.best - config.early_stopping_min_delta:
            run.best, run.best_step, run.bad = val, run.step, 0
            if on_best is not None and run.rank == 0:
                on_best(run.task.trainable, run.step, val)
            return
    run.bad += 1
    if config.early_stopping_patience and run.bad >= config.early_stopping_patience:
        run.stopped_early = True


def _save(run: _Run) -> None:
    """A checkpoint of the step just done (rank 0 writes it; every rank's generator and RNG states go in)."""
    gens = [run.generator.get_state().cpu()]
    rngs = [ckpt.rng_state()]
    if run.world > 1:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, (gens[0], rngs[0]))
        gens, rngs = [g for g, _ in gathered], [r for _, r in gathered]
    if run.rank == 0:
        ckpt.save_checkpoint(run.run_dir, run.step, {
            "trainable": {k: v.detach().cpu() for k, v in run.task.trainable.state_dict().items()},
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
            "generators": gens, "rng": rngs, "order": run.order.state(), "world_size": run.world,
            "best": {"val": run.best_val(), "step": run.best_step, "bad": run.bad},
            "ema": run.ema.state_dict() if run.ema is not None else {},
            "records": run.tlog.records, "config": run.config_dict,
        }, keep=run.config.keep_checkpoints)
    if run.world > 1:
        dist.barrier()


def train(task, train_set, config: TrainConfig, run_dir, val_set=None, resume: bool = True,
          on_step: Optional[Callable[[int, int, dict], None]] = None,
          on_best: Optional[Callable[[torch.nn.Module, int, float], None]] = None,
          should_stop: Optional[Callable[[], None]] = None,
          on_preview: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Train `task.trainable` in place. on_step(step, steps, record) after every step (progress bars);
    on_best(module, step, val_loss) on rank 0 when validation improves; on_preview(step) on rank 0 every
    config.preview_every steps and at the end (sample pictures); should_stop() may raise to abort
    (ComfyUI's interrupt), after which the last checkpoint is intact."""
    run = _start(task, train_set, config, run_dir)
    _resume(run, train_set, ckpt.load_latest(run.run_dir, map_location="cpu") if resume else None)
    run.model = task
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.model = DistributedDataParallel(task, device_ids=[run.device] if run.device.type == "cuda" else None)
    validating = config.val_every > 0 and val_set is not None and len(val_set) > 0
    t_last, samples_since = time.perf_counter(), 0
    task.train()
    while run.step < config.steps and not run.stopped_early:
        if should_stop is not None:
            should_stop()
        record = _step(run, train_set)
        step, last = run.step, run.step == config.steps
        samples_since += run.global_batch
        if validating and (step % config.val_every == 0 or last):
            _validate(run, val_set, record, on_best)
        end = last or run.stopped_early
        if step % max(1, config.log_every) == 0 or "val_loss" in record or end:
            now = time.perf_counter()
            record["seconds"] = now - t_last
            record["samples_per_second"] = samples_since / max(now - t_last, 1e-9)
            t_last, samples_since = now, 0
            run.tlog.add(record)
        if on_step is not None:
            on_step(step, config.steps, record)
        if on_preview is not None and run.rank == 0 and config.preview_every and (
                step % config.preview_every == 0 or end):
            with run.averaged():
                on_preview(step)
        if end or (config.checkpoint_every and step % config.checkpoint_every == 0):
            _save(run)
    if run.ema is not None:  # the run's result is the average (the last checkpoint keeps both)
        run.ema.copy_to_params()
    if run.stopped_early:
        log.info("EMMA training: early stop at step %d (best validation %.5f at step %s)", run.step, run.best,
                 run.best_step)
    return _finish(run)


def _finish(run: _Run) -> TrainResult:
    """The loss curve and summary.json (rank 0), and the result."""
    curve = None
    if run.rank == 0:
        curve = render_loss_curve(run.tlog.records)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        curve.save(run.run_dir / "loss_curve.png")
        run.tlog.summary({"step": run.step, "resumed_from": run.resumed_from, "stopped_early": run.stopped_early,
                          "best_val_loss": run.best_val(), "best_step": run.best_step, "world_size": run.world,
                          "global_batch": run.global_batch, "config": run.config_dict})
    return TrainResult(run.step, run.resumed_from, run.stopped_early, run.best_val(), run.best_step,
                       list(run.tlog.records), curve)
