"""Training the world's IP-Adapter peer (ipadapter.py) as the object module is trained: the same feature cache
(emma_core.train.cache.CachedDataset), the same loop (emma_core.train.loop.train), the same objective.

AdapterTask is objective.EMMATask with two members replaced: `context` (ELLA's text context, frozen and
without any EMMA branch, plus the adapter's image tokens and a weight per row) and the denoiser (ComfyUI's
apply_model on ipadapter.patch_model's clone, through objective.comfy_epsilon_denoiser). Everything else is
EMMATask's own: the DDPM schedule, the noise / timestep / text-dropout / condition-dropout draws (one
generator, the same calls in the same order, so the same batches draw the same numbers as the object module's
run), min-SNR weighting, the validation draws, gradient checkpointing and the loss. A dropped condition is a
row weight of 0: that row is exactly the frozen UNet on the text, as the negative is at sampling.

parameter_counts: the adapter's parameters beside an EMMA object module's, for one world configuration.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from emma_core.ella import Group
from emma_core.train.cache import CachedDataset, Subset, split_validation
from emma_core.train.loop import TrainConfig, TrainResult, train
from emma_core.train.objective import EMMATask, collate, comfy_epsilon_denoiser
from emma_core.train.schedule import DDPMSchedule

from .ipadapter import ImageAdapter, load_adapter, patch_model, save_adapter

log = logging.getLogger(__name__)


@dataclass
class AdapterContext:
    """What AdapterTask.context hands its denoiser: ELLA's context [B, n, C], the image tokens [B, N, C] and
    the image attention's weight per row [B] (1, or 0 where the condition is dropped)."""

    text: torch.Tensor
    tokens: torch.Tensor
    weights: torch.Tensor


def ella_context(ella, texts: list[torch.Tensor], timesteps: torch.Tensor) -> torch.Tensor:
    """The connector's context per row, rows grouped by text length (no padding: as inference runs them),
    one connector call for all groups."""
    param = next(ella.parameters())
    lengths = [t.shape[0] for t in texts]
    groups, order = [], []
    for length in sorted(set(lengths)):
        rows = [i for i, n in enumerate(lengths) if n == length]
        groups.append(Group(torch.stack([texts[i] for i in rows]).to(param.device, param.dtype), len(rows)))
        order += rows
    order = torch.tensor(order, device=timesteps.device)
    return ella.forward_groups(groups, timesteps[order].float())[torch.argsort(order)]


class _PatchedModel:
    """BaseModel's face for comfy_epsilon_denoiser: apply_model runs the patched clone's transformer options
    (one positive chunk: the rows' weights carry the dropout)."""

    def __init__(self, patched):
        self.patched, self.model_sampling = patched, patched.model.model_sampling

    def apply_model(self, x, t, **kwargs):
        options = dict(self.patched.model_options.get("transformer_options", {}), cond_or_uncond=[0])
        return self.patched.model.apply_model(x, t, transformer_options=options, **kwargs)


class AdapterDenoiser:
    """denoiser(noisy, timesteps, AdapterContext) -> eps: the patched ComfyUI model at DDPM timesteps."""

    def __init__(self, model_patcher, adapter: ImageAdapter):
        self.model_patcher, self.adapter = model_patcher, adapter

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: AdapterContext) -> torch.Tensor:
        patched = patch_model(self.model_patcher, self.adapter, context.tokens, context.weights)
        return comfy_epsilon_denoiser(_PatchedModel(patched))(noisy, timesteps, context.text)


class AdapterTask(EMMATask):
    """The loop's task: forward(batch, generator) -> loss, validation_losses, collate; `trainable` is the
    adapter, the only registered sub-module. The UNet (`model_patcher`, ComfyUI's ModelPatcher) is frozen."""

    def __init__(self, adapter: ImageAdapter, ella, model_patcher, schedule: Optional[DDPMSchedule] = None,
                 empty_text: Optional[torch.Tensor] = None, cond_dropout: float = 0.1, text_dropout: float = 0.1,
                 noise_offset: float = 0.0, min_snr_gamma: float = 0.0, gradient_checkpointing=False):
        model_patcher.model.requires_grad_(False).eval()
        super().__init__(adapter, ella, AdapterDenoiser(model_patcher, adapter), schedule=schedule,
                         empty_text=empty_text, cond_dropout=cond_dropout, text_dropout=text_dropout,
                         noise_offset=noise_offset, min_snr_gamma=min_snr_gamma,
                         gradient_checkpointing=gradient_checkpointing, checkpoint_unet=model_patcher)
        adapter.check_unet(model_patcher)

    def context(self, texts, timesteps, features, keep_cond) -> AdapterContext:
        tokens = self.trainable.tokens(features)
        with torch.no_grad():  # the connector is frozen and nothing trainable feeds it
            text = ella_context(self.ella, texts, timesteps)
        return AdapterContext(text, tokens, keep_cond.to(tokens.dtype))

    def collate(self, samples: list[dict]) -> dict:
        return collate(samples, self.trainable.feature_kind)


@dataclass
class AdapterTrainOutput:
    adapter_path: Optional[Path]
    result: TrainResult
    adapter: ImageAdapter
    train_count: int
    val_count: int


def train_adapter(cache_folder, names, *, model_patcher, ella, out_path, run_dir, config: TrainConfig,
                  device=None, projection: str = "tokens", val_fraction: float = 0.1, cond_dropout: float = 0.1,
                  text_dropout: float = 0.1, noise_offset: float = 0.0, min_snr_gamma: float = 0.0,
                  gradient_checkpointing=False, resume: bool = True, save_dtype: torch.dtype = torch.float16,
                  on_step: Optional[Callable] = None) -> AdapterTrainOutput:
    """The adapter on a built feature cache, as emma.train_emma_module trains the object module on it: the same
    seed before the initial weights, the same validation split, the best validated weights written (else the
    last). `ella` is the frozen connector on `device` (job.frozen_ella); the model is on `device` already."""
    device = torch.device(device or "cpu")
    data = CachedDataset(cache_folder, names)
    if len(data) == 0:
        raise ValueError(f"the feature cache {cache_folder} has none of the dataset's images")
    dims = {k: tuple(v.shape) for k, v in data.sample(0)["features"].items() if k != "mask"}
    torch.manual_seed(config.seed)
    adapter = ImageAdapter.for_unet(model_patcher, dims, projection=projection,
                                    feature_encoder=data.feature_encoder())
    adapter = adapter.to(device).float().requires_grad_(True).train()
    task = AdapterTask(adapter, ella, model_patcher, empty_text=data.empty_text.to(device), cond_dropout=cond_dropout,
                       text_dropout=text_dropout, noise_offset=noise_offset, min_snr_gamma=min_snr_gamma,
                       gradient_checkpointing=gradient_checkpointing)
    train_idx, val_idx = split_validation(len(data), val_fraction, config.seed)
    run_dir = Path(run_dir)
    best_path = run_dir / "best.safetensors"

    def on_best(trained, step, val):
        trained.training_steps = step
        save_adapter(trained, best_path, dtype=save_dtype)

    result = train(task, Subset(data, train_idx), config, run_dir, val_set=Subset(data, val_idx) if val_idx else None,
                   resume=resume, on_step=on_step, on_best=on_best)
    adapter.training_steps = result.step
    if result.best_step is not None and best_path.is_file():
        adapter.load_state_dict({k: v.to(device) for k, v in load_adapter(best_path).state_dict().items()})
        adapter.training_steps = result.best_step
    out = Path(out_path)
    save_adapter(adapter, out, dtype=save_dtype)
    return AdapterTrainOutput(out, result, adapter, len(train_idx), len(val_idx))


# ---- the comparison ----------------------------------------------------------------------------------------
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(unet: str = "two-level", ella_layers: int = 2, ella_latents: int = 16, size: int = 64,
                     projection: str = "tokens") -> dict[str, int]:
    """Parameters of the adapter and of an EMMA object module for one world configuration (the defaults: the
    full schedule, devtools/world/build.py SCHEDULES["full"]), built on the meta device. ComfyUI imported."""
    import numpy as np
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from emma_core.emma_module import EMMAConfig, EMMAModule

    from .base import UNETS, ella_config
    from .features import object_features

    features = object_features([np.zeros((size, size, 3), np.float32)])
    dims = {k: tuple(v.shape[1:]) for k, v in features.tensors.items()}
    with torch.device("meta"):
        model = UNetModel(**UNETS[unet])
        adapter = ImageAdapter.for_unet(model, dims, projection=projection)
        emma = EMMAModule(EMMAConfig("object", feature_dims=dims, ella=ella_config(ella_layers, ella_latents)))
    ip = sum(count_parameters(layer) for layer in adapter.layers.values())
    return {"adapter": count_parameters(adapter), "adapter_projection": count_parameters(adapter) - ip,
            "adapter_kv": ip, "adapter_layers": len(adapter.layers), "adapter_tokens": adapter.num_tokens,
            "emma_object_module": count_parameters(emma), "unet": count_parameters(model)}
