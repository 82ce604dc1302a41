"""The generic training loop: a trainable task (nn.Module: batch + generator -> loss) over a dataset.

    result = train(task, train_set, config, run_dir, val_set=held_out)

The task (objective.EMMATask, or any module with the same few members) provides
    forward(batch, generator) -> scalar loss     the only place randomness is drawn (from `generator`)
    validation_losses(batch) -> [B] losses        deterministic (fixed noise/timestep per sample)
    collate(samples) -> batch                     samples come from dataset.sample(i)
    trainable                                     the nn.Module the optimiser trains and checkpoints save
so the same loop serves EMMA modules, UMM's projector and Emu-style quality tuning.

What it does: AdamW (paper defaults), linear warm-up, gradient clipping, fp16 autocast + GradScaler on
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

from ..ella import rows_batched
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
    warmup_iters: int = 1000          # paper: linear warm-up from 10% to 100% over 1000 iterations
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


@dataclass
class TrainResult:
    step: int
    resumed_from: Optional[int]
    stopped_early: bool
    best_val_loss: Optional[float]
    best_step: Optional[int]
    records: list = field(default_factory=list)
    curve: object = None               # PIL image


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
    was_training = task.training
    task.eval()
    try:
        for start in range(0, len(mine), batch_size):
            batch = _to_device(task.collate([dataset.sample(i) for i in mine[start:start + batch_size]]), device)
            with rows_batched():
                losses = task.validation_losses(batch)
            total[0] += losses.double().sum()
            total[1] += losses.numel()
    finally:
        task.train(was_training)
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1])


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


def train(task, train_set, config: TrainConfig, run_dir, val_set=None, resume: bool = True,
          on_step: Optional[Callable[[int, int, dict], None]] = None,
          on_best: Optional[Callable[[torch.nn.Module, int, float], None]] = None,
          should_stop: Optional[Callable[[], None]] = None,
          on_preview: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Train `task.trainable` in place. on_step(step, steps, record) after every step (progress bars);
    on_best(module, step, val_loss) on rank 0 when validation improves; on_preview(step) on rank 0 every
    config.preview_every steps and at the end (sample pictures); should_stop() may raise to abort
    (ComfyUI's interrupt), after which the last checkpoint is intact."""
    run_dir = Path(run_dir)
    rank, world = _world()
    device = task.device
    module = task.trainable
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the task has no trainable parameters")
    optimizer = adamw(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_factor(s, config.warmup_iters, config.warmup_start)
        * cosine_factor(s, config.warmup_iters, config.steps, config.decay_to))
    amp_dtype = _precision(config.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16 and device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank)
    global_batch = config.batch_size * world * config.grad_accum
    order = DataOrder(len(train_set), config.seed)
    tlog = TrainLog(run_dir, enabled=rank == 0)
    step, resumed_from, best, best_step, bad = 0, None, math.inf, None, 0

    state = ckpt.load_latest(run_dir, map_location="cpu") if resume else None
    if state is not None:
        if state.get("world_size", 1) != world:
            raise ValueError(f"{run_dir} was trained with {state.get('world_size')} processes; resume it with the "
                             f"same number (now {world}) or start a new run folder")
        module.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generators"][rank].cpu())
        ckpt.set_rng_state(state["rng"][rank])
        order = DataOrder(len(train_set), config.seed, state["order"]["epoch"], state["order"]["offset"])
        if state["order"]["count"] != len(train_set):
            raise ValueError(f"the training set has {len(train_set)} samples but the checkpoint was made with "
                             f"{state['order']['count']}: the dataset or cache changed; start a new run folder")
        step = resumed_from = int(state["step"])
        best = state["best"]["val"] if state["best"]["val"] is not None else math.inf
        best_step, bad = state["best"]["step"], state["best"]["bad"]
        if rank == 0:
            tlog.restore(state["records"])
        log.info("EMMA training: resumed %s at step %d", run_dir, step)
    elif rank == 0 and run_dir.exists():
        for name in ("log.csv", "log.jsonl"):
            (run_dir / name).unlink(missing_ok=True)

    model = task
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(task, device_ids=[device] if device.type == "cuda" else None)

    def save(at_step: int) -> None:
        gens = [generator.get_state().cpu()]
        rngs = [ckpt.rng_state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, (gens[0], rngs[0]))
            gens, rngs = [g for g, _ in gathered], [r for _, r in gathered]
        if rank == 0:
            ckpt.save_checkpoint(run_dir, at_step, {
                "trainable": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "generators": gens, "rng": rngs, "order": order.state(), "world_size": world,
                "best": {"val": None if math.isinf(best) else best, "step": best_step, "bad": bad},
                "records": tlog.records, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                     for k, v in asdict(config).items()},
            }, keep=config.keep_checkpoints)
        if world > 1:
            dist.barrier()

    stopped_early = False
    t_last, samples_since = time.perf_counter(), 0
    task.train()
    while step < config.steps:
        if should_stop is not None:
            should_stop()
        optimizer.zero_grad(set_to_none=True)
        indices = order.take(global_batch)
        loss_sum = 0.0
        for micro in range(config.grad_accum):
            chunk = indices[(micro * world + rank) * config.batch_size:(micro * world + rank + 1) * config.batch_size]
            batch = _to_device(task.collate([train_set.sample(i) for i in chunk]), device)
            sync = contextlib.nullcontext() if (world == 1 or micro == config.grad_accum - 1) else model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None), rows_batched():
                    loss = model(batch, generator)
                scaler.scale(loss / config.grad_accum).backward()
            loss_sum += float(loss.detach())
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        samples_since += global_batch
        record = {"step": step, "loss": _mean_across(loss_sum / config.grad_accum, device),
                  "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm)}
        validate = config.val_every > 0 and val_set is not None and len(val_set) > 0 and (
            step % config.val_every == 0 or step == config.steps)
        if validate:
            val = evaluate(task, val_set, config.batch_size, device)
            record["val_loss"] = val
            if val < best - config.early_stopping_min_delta:
                best, best_step, bad = val, step, 0
                if on_best is not None and rank == 0:
                    on_best(module, step, val)
            else:
                bad += 1
            if config.early_stopping_patience and bad >= config.early_stopping_patience:
                stopped_early = True
        if step % max(1, config.log_every) == 0 or validate or step == config.steps or stopped_early:
            now = time.perf_counter()
            record["seconds"] = now - t_last
            record["samples_per_second"] = samples_since / max(now - t_last, 1e-9)
            t_last, samples_since = now, 0
            tlog.add(record)
        if on_step is not None:
            on_step(step, config.steps, record)
        if on_preview is not None and rank == 0 and config.preview_every and (
                step % config.preview_every == 0 or step == config.steps or stopped_early):
            on_preview(step)
        if stopped_early or step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
            save(step)
        if stopped_early:
            log.info("EMMA training: early stop at step %d (best validation %.5f at step %s)", step, best, best_step)
            break

    curve = None
    if rank == 0:
        curve = render_loss_curve(tlog.records)
        run_dir.mkdir(parents=True, exist_ok=True)
        curve.save(run_dir / "loss_curve.png")
        tlog.summary({"step": step, "resumed_from": resumed_from, "stopped_early": stopped_early,
                      "best_val_loss": None if math.isinf(best) else best, "best_step": best_step,
                      "world_size": world, "global_batch": global_batch,
                      "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}})
    return TrainResult(step, resumed_from, stopped_early, None if math.isinf(best) else best, best_step,
                       list(tlog.records), curve)
