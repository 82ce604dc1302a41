"""Emu's quality-tuning recipe on the shared trainer (emma_core.train.loop).

    data = prepare_dataset(folder, review, encoders, cache_root)     curated images -> latents + CLIP text
    result = quality_tune(unet, denoiser, data.train, data.val, EmuRecipe(), run_dir)
    save_lora(path, result.lora, result.metadata)                     -> models/loras, for stock LoraLoader

Recipe (Dai et al. 2023, section 3.3): batch 64, noise offset 0.1, at most 15K iterations, early stopping
("longer tuning overfits"). Not published and so chosen here: the learning rate (1e-4 LoRA, 1e-5 full), the
validation split (10%, at least 1 image), validation every 100 steps with patience 5, warm-up 100 steps.
The effective batch of 64 is reached by gradient accumulation: grad_accum = ceil(64 / (micro-batch x processes)).

The denoiser is a callable (noisy latents [B,4,h,w], DDPM timesteps [B] long, context [B,T,768]) -> eps, e.g.
emma_core.train.objective.comfy_epsilon_denoiser(model.model) for ComfyUI's UNet. Trainable parameters are
the LoRA's (mode "lora": hooks on the UNet, see lora.py) or every UNet parameter (mode "full"). The saved
weights are those of the best validation step: with early stopping the run continues `patience` validations
past the best and then returns the best step's weights, not the last ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import Features
from ..atomic import save_safetensors_atomic
from ..train.cache import CacheEncoders, CachedDataset, Subset, build_cache, split_validation
from ..train.dataset import DatasetItem, scan_dataset
from ..train.loop import TrainConfig, train
from ..train.schedule import DDPMSchedule
from .curate import apply_review, read_review_list
from .lora import LoRASet, full_diff, inject_lora, kohya_metadata

log = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BEST_FILE = "best.safetensors"
# The learning rate of each mode when none is given (Emu published none): the node's learning_rate 0 and
# emu_tune.py without --lr both mean these.
DEFAULT_LR = {"lora": 1e-4, "full": 1e-5}


@dataclass
class EmuRecipe:
    mode: str = "lora"               # "lora" or "full"
    rank: int = 16
    alpha: Optional[float] = None    # None = rank (scale 1)
    targets: str = "transformer"     # lora.TARGETS preset or a regular expression over module paths
    noise_offset: float = 0.1        # Emu
    effective_batch: int = 64        # Emu
    micro_batch: int = 4             # per process and forward pass; accumulation makes up the rest
    max_steps: int = 15000           # Emu: at most 15K iterations
    lr: Optional[float] = None       # None = DEFAULT_LR[mode]
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    val_every: int = 100
    patience: int = 5                # validations without improvement before stopping (0 = never stop early)
    min_delta: float = 0.0
    caption_dropout: float = 0.0     # rows trained on the empty caption (keeps CFG's unconditional branch)
    checkpoint_every: int = 500
    precision: str = "auto"
    seed: int = 0
    save_dtype: str = "fp16"         # of the saved LoRA: fp16, bf16 or fp32

    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        if self.mode not in DEFAULT_LR:
            raise ValueError(f"mode must be 'lora' or 'full', not {self.mode!r}")
        return DEFAULT_LR[self.mode]

    def grad_accum(self, world: int = 1) -> int:
        return max(1, math.ceil(self.effective_batch / (self.micro_batch * world)))

    def train_config(self, world: int = 1) -> TrainConfig:
        if self.mode not in ("lora", "full"):
            raise ValueError(f"mode must be 'lora' or 'full', not {self.mode!r}")
        return TrainConfig(steps=self.max_steps, batch_size=self.micro_batch, grad_accum=self.grad_accum(world),
                           lr=self.learning_rate(), weight_decay=self.weight_decay, warmup_iters=self.warmup_steps,
                           grad_clip=self.grad_clip, precision=self.precision, val_every=self.val_every,
                           early_stopping_patience=self.patience, early_stopping_min_delta=self.min_delta,
                           checkpoint_every=self.checkpoint_every, log_every=max(1, min(10, self.val_every or 10)),
                           seed=self.seed)

    def torch_save_dtype(self) -> Optional[torch.dtype]:
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[self.save_dtype]

    def fingerprint(self) -> str:
        blob = json.dumps({k: v for k, v in asdict(self).items() if k != "save_dtype"}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _common_length(texts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """CLIP conditionings of different lengths (prompts over 75 tokens come in chunks of 77) repeated to a
    common length, as ComfyUI's CONDCrossAttn batches them (harmless for plain cross-attention)."""
    lengths = {t.shape[0] for t in texts}
    if len(lengths) == 1:
        return list(texts)
    target = math.lcm(*lengths)
    return [t.repeat(target // t.shape[0], 1) for t in texts]


def collate(samples: list[dict]) -> dict:
    return {"latents": torch.stack([s["latents"] for s in samples]),
            "text": torch.stack(_common_length([s["text"] for s in samples])),
            "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long)}


class EmuTask(nn.Module):
    """The trainer's task: SD1.5's epsilon loss with Emu's noise offset. `trainable` is the only registered
    sub-module (the LoRASet, or the UNet itself for full fine-tuning)."""

    def __init__(self, trainable: nn.Module, denoiser: Denoiser, schedule: Optional[DDPMSchedule] = None,
                 noise_offset: float = 0.1, empty_text: Optional[torch.Tensor] = None, caption_dropout: float = 0.0,
                 validation_seed: int = 1234):
        super().__init__()
        self.trainable = trainable
        self.__dict__["denoiser"] = denoiser
        self.schedule = schedule or DDPMSchedule()
        self.noise_offset = float(noise_offset)
        self.empty_text = empty_text
        self.caption_dropout = float(caption_dropout)
        self.validation_seed = validation_seed
        if self.caption_dropout > 0 and empty_text is None:
            raise ValueError("caption dropout needs the conditioning of the empty caption (empty_text)")

    @property
    def device(self) -> torch.device:
        return next(self.trainable.parameters()).device

    def noise(self, shape, generator: torch.Generator, device) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator, device=device)
        if self.noise_offset:  # Emu / "diffusion with offset noise": a per-channel constant shift
            noise = noise + self.noise_offset * torch.randn((*shape[:2], 1, 1), generator=generator, device=device)
        return noise

    def losses(self, latents, text, noise, timesteps) -> torch.Tensor:
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        prediction = self.denoiser(noisy, timesteps, text)
        return F.mse_loss(prediction.float(), noise.float(), reduction="none").flatten(1).mean(1)

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        latents, text = batch["latents"], batch["text"]
        b, device = latents.shape[0], latents.device
        noise = self.noise(latents.shape, generator, device)
        timesteps = torch.randint(0, self.schedule.steps, (b,), generator=generator, device=device)
        if self.caption_dropout > 0:
            drop = torch.rand(b, generator=generator, device=device) < self.caption_dropout
            if bool(drop.any()):
                rows = _common_length([*text.unbind(0), self.empty_text.to(device, text.dtype)])
                text = torch.where(drop.view(-1, 1, 1), rows[-1].unsqueeze(0), torch.stack(rows[:-1]))
        return self.losses(latents, text, noise, timesteps).mean()

    @torch.no_grad()
    def validation_losses(self, batch: dict) -> torch.Tensor:
        """Fixed noise and timestep per sample (keyed by its index): comparable across steps and runs."""
        latents = batch["latents"]
        noises, steps = [], []
        for index in batch["index"].tolist():
            g = torch.Generator().manual_seed(self.validation_seed * 1_000_003 + index)
            noises.append(self.noise((1, *latents.shape[1:]), g, "cpu")[0])
            steps.append(torch.randint(0, self.schedule.steps, (1,), generator=g))
        noise = torch.stack(noises).to(latents.device)
        return self.losses(latents, batch["text"], noise, torch.cat(steps).to(latents.device))

    def collate(self, samples: list[dict]) -> dict:
        return collate(samples)


@dataclass
class TuneResult:
    lora: dict                     # the file's tensors (kohya layout) at the best validation step (or the last)
    metadata: dict
    step: int                      # where training ended
    best_step: Optional[int]
    best_val_loss: Optional[float]
    stopped_early: bool
    saved_step: int                # the step whose weights `lora` holds
    records: list = field(default_factory=list)
    curve: object = None           # PIL image

    def summary(self) -> str:
        how = "early stop" if self.stopped_early else "step limit"
        best = (f"best validation loss {self.best_val_loss:.5f} at step {self.best_step}"
                if self.best_step is not None else "no validation (too few images?)")
        return (f"trained {self.step} steps ({how}) at learning rate {self.metadata['ss_learning_rate']}; {best}; "
                f"saved the weights of step {self.saved_step}")


def save_lora(path: str | os.PathLike, tensors: dict, metadata: Optional[dict] = None) -> Path:
    """Atomically write a .safetensors LoRA (a crash leaves the old file or the new one)."""
    save_safetensors_atomic(path, tensors, {k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def load_lora_file(path: str | os.PathLike) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def normal_tensors(module: nn.Module) -> int:
    """Replace inference tensors (ComfyUI loads and runs models under torch.inference_mode) by normal copies
    with the same values, so autograd can save them for backward. Returns how many were replaced."""
    count = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, t in list(table.items()):
                    if t is not None and t.is_inference():
                        copy = t.detach().clone()
                        table[name] = nn.Parameter(copy, requires_grad=t.requires_grad) if isinstance(
                            t, nn.Parameter) else copy
                        count += 1
    return count


def quality_tune(unet: nn.Module, denoiser: Denoiser, train_set, val_set, recipe: EmuRecipe, run_dir,
                 schedule: Optional[DDPMSchedule] = None, empty_text: Optional[torch.Tensor] = None,
                 on_step: Optional[Callable[[int, int, dict], None]] = None,
                 should_stop: Optional[Callable[[], None]] = None, resume: bool = True,
                 extra_metadata: Optional[dict] = None,
                 on_validation: Optional[Callable[[int, float, dict], None]] = None,
                 device: Optional[torch.device] = None) -> TuneResult:
    """Tune `unet` (the module the denoiser runs) with Emu's recipe. The UNet is left exactly as it was
    (LoRA hooks removed; in full mode the original weights are restored) whatever happens.
    on_validation(step, val_loss, tensors) after every validation (tests, previews; it costs an export)."""
    run_dir = Path(run_dir)
    config = recipe.train_config()
    normal_tensors(unet)
    save_dtype = recipe.torch_save_dtype()
    params = list(unet.parameters())
    grad_before = [p.requires_grad for p in params]
    original = None
    loras: Optional[LoRASet] = None
    best: dict = {}
    meta = kohya_metadata(recipe.rank if recipe.mode == "lora" else 0,
                          (recipe.alpha if recipe.alpha is not None else recipe.rank) if recipe.mode == "lora" else 0,
                          {"emu_mode": recipe.mode, "emu_recipe": json.dumps(asdict(recipe)),
                           "ss_learning_rate": recipe.learning_rate(), **(extra_metadata or {})})

    def export() -> dict:
        if loras is not None:
            return loras.to_kohya(save_dtype)
        return full_diff(original, {k: v.detach() for k, v in unet.state_dict().items()}, save_dtype)

    def remember_best(module, step, val):
        tensors = export()
        best.update(step=step, val=val, tensors=tensors)
        # on disk too: a resumed run that is past its best step still returns the best step's weights
        save_lora(run_dir / BEST_FILE, tensors, {**meta, "emu_step": step, "emu_val_loss": val})

    try:
        unet.requires_grad_(False)
        if recipe.mode == "lora":
            loras = inject_lora(unet, recipe.targets, recipe.rank, recipe.alpha)
            if device is not None:  # where the activations are (ComfyUI's load device), not the weights
                loras.to(device)
            trainable = loras
        else:
            original = {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()}
            unet.requires_grad_(True)
            trainable = unet
        task = EmuTask(trainable, denoiser, schedule, recipe.noise_offset, empty_text, recipe.caption_dropout)
        if len(train_set) == 0:
            raise ValueError("no training images")
        def step_done(step, steps, record):
            if on_validation is not None and record.get("val_loss") is not None:
                on_validation(step, record["val_loss"], export())
            if on_step is not None:
                on_step(step, steps, record)

        result = train(task, train_set, config, run_dir, val_set=val_set, resume=resume, on_step=step_done,
                       on_best=remember_best, should_stop=should_stop)
        if result.best_step is not None:
            if best.get("step") != result.best_step:  # resumed after the best step: it is on disk
                tensors, file_meta = load_lora_file(run_dir / BEST_FILE)
                if int(file_meta.get("emu_step", -1)) != result.best_step:
                    raise RuntimeError(f"{run_dir / BEST_FILE} is not the best step {result.best_step}")
                best.update(step=result.best_step, val=result.best_val_loss, tensors=tensors)
            tensors, saved_step = best["tensors"], best["step"]
        else:
            tensors, saved_step = export(), result.step
        metadata = {**meta, "emu_step": saved_step, "emu_trained_steps": result.step,
                    "emu_val_loss": "" if result.best_val_loss is None else result.best_val_loss,
                    "emu_stopped_early": result.stopped_early}
        return TuneResult(tensors, metadata, result.step, result.best_step, result.best_val_loss,
                          result.stopped_early, saved_step, result.records, result.curve)
    finally:
        if loras is not None:
            loras.detach()
        if original is not None:
            with torch.no_grad():
                unet.load_state_dict(original)
        for p, g in zip(params, grad_before):
            p.requires_grad_(g)


# ---- the dataset -----------------------------------------------------------------------------------------
@dataclass
class EmuData:
    train: object
    val: object
    empty_text: torch.Tensor
    report: str
    names: list


def prepare_dataset(folder, review_list, encode_text: Callable[[str], torch.Tensor],
                    encode_image: Callable[[torch.Tensor], torch.Tensor], fingerprint: dict, cache_root,
                    resolution: int = 512, val_fraction: float = 0.1, seed: int = 0,
                    progress: Optional[Callable[[int, int], None]] = None) -> EmuData:
    """Images with captions (emma_core.train.dataset's format) that the review list marks keep -> the shared
    feature cache (VAE latents in model space + the CLIP conditioning of the caption) -> train / held-out.

    encode_text(caption) -> [T, 768]; encode_image(IMAGE [1, H, W, 3] in [0, 1]) -> [1, 4, h, w]."""
    scan = scan_dataset(folder)
    lines = []
    items: list[DatasetItem] = scan.items
    if review_list is not None and str(review_list) != "":
        review = read_review_list(review_list)
        kept, skipped = apply_review([i.name for i in items], review)
        keep = set(kept)
        items = [i for i in items if i.name in keep]
        lines.append(f"review list {Path(review_list).name}: {len(kept)} marked keep, {len(skipped)} not used")
        lines += [f"  {n}: {r}" for n, r in skipped]
        if not items:
            raise ValueError(f"no image of {folder} is marked keep in {review_list}")
    encoders = CacheEncoders(encode_text=encode_text, encode_image=encode_image,
                             encode_condition=lambda image, mask: Features("none", {}),
                             fingerprint={"kind": "emu-sd15", "resolution": resolution, **fingerprint},
                             resolution=resolution)
    report = build_cache(items, cache_root, encoders, progress=progress, scan_skipped=scan.skipped)
    lines.insert(0, report.text())
    data = CachedDataset(report.folder, names=[i.name for i in items])
    train_idx, val_idx = split_validation(len(data), val_fraction, seed)
    lines.append(f"{len(train_idx)} training images, {len(val_idx)} held out for validation")
    return EmuData(Subset(data, train_idx), Subset(data, val_idx) if val_idx else None, data.empty_text,
                   "\n".join(lines), list(data.names))
