"""UMM-Diffusion's training objective: only the projector MLP trains, through a frozen denoiser.

Batch (from UMMTask.collate): latents [B, C, h, w], h_y [B, T, D] (the frozen text encoder's states for the
caption, precomputed), image_embeds [B, image_dim] (the frozen image encoder's embedding of the subject image)
and positions (the subject word's token positions: one list for the whole batch, or one list per row).
The loss is SD1.5's DDPM epsilon MSE of

    denoiser(noisy, t, context=h_u),   h_u = replace_positions(h_y, positions, projector(image_embeds))

The denoiser is any callable denoise(noisy [B, C, h, w], timesteps [B] long, context [B, T, D]) -> eps, the
same one EMMATask uses (objective.comfy_epsilon_denoiser for ComfyUI's UNet, or a small torch net in tests).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..umm import UMMProjector, replace_positions
from .objective import Denoiser
from .schedule import DDPMSchedule


def _positions_of(sample: dict) -> list[int]:
    p = sample["positions"]
    return [int(x) for x in (p.tolist() if torch.is_tensor(p) else p)]


def collate_umm(samples: list[dict]) -> dict:
    """Samples {latents, h_y, image_embeds, positions, index} -> a batch on the CPU. `positions` stays a plain
    list when every row has the same, else a list of lists (one per row)."""
    positions = [_positions_of(s) for s in samples]
    same = all(p == positions[0] for p in positions)
    return {"latents": torch.stack([s["latents"] for s in samples]),
            "h_y": torch.stack([s["h_y"] for s in samples]),
            "image_embeds": torch.stack([s["image_embeds"] for s in samples]),
            "positions": positions[0] if same else positions,
            "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long)}


def unified_context(h_y: torch.Tensor, positions, pseudo_word: torch.Tensor) -> torch.Tensor:
    """h_u for a batch: `positions` is one list of ints (all rows) or a list of lists (one per row)."""
    per_row = (torch.is_tensor(positions) and positions.ndim == 2) or (
        not torch.is_tensor(positions) and len(positions) > 0 and isinstance(positions[0], (list, tuple)))
    if per_row:
        rows = [replace_positions(h_y[i:i + 1], [int(x) for x in p], pseudo_word[i:i + 1])
                for i, p in enumerate(positions)]
        return torch.cat(rows)
    return replace_positions(h_y, [int(x) for x in positions], pseudo_word)


class UMMTask(nn.Module):
    """forward(batch, generator) -> scalar loss; `trainable` is the projector, the only registered module."""

    def __init__(self, projector: UMMProjector, denoiser: Denoiser, schedule: Optional[DDPMSchedule] = None,
                 noise_offset: float = 0.0):
        super().__init__()
        self.trainable = projector
        if isinstance(denoiser, nn.Module):
            denoiser.requires_grad_(False).eval()
        self.__dict__["denoiser"] = denoiser  # frozen: kept out of the module tree (not trained, not saved)
        self.schedule = schedule or DDPMSchedule()
        self.noise_offset = float(noise_offset)

    @property
    def device(self) -> torch.device:
        return next(self.trainable.parameters()).device

    def context(self, batch: dict, image_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        h_y = batch["h_y"]
        embeds = batch["image_embeds"] if image_embeds is None else image_embeds
        param = next(self.trainable.parameters())
        pseudo = self.trainable(embeds.to(param.device, param.dtype))
        return unified_context(h_y, batch["positions"], pseudo.to(h_y.dtype))

    def losses(self, batch: dict, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-row MSE between the predicted and the true noise, [B] float32."""
        latents = batch["latents"]
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        prediction = self.denoiser(noisy, timesteps, self.context(batch))
        return F.mse_loss(prediction.float(), noise.float(), reduction="none").flatten(1).mean(1)

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        latents = batch["latents"]
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        if self.noise_offset:
            noise = noise + self.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator,
                                                            device=latents.device)
        timesteps = torch.randint(0, self.schedule.steps, (latents.shape[0],), generator=generator,
                                  device=latents.device)
        return self.losses(batch, noise, timesteps).mean()

    @torch.no_grad()
    def validation_losses(self, batch: dict, seed: int = 1234) -> torch.Tensor:
        """Fixed noise and timestep per sample (keyed by its index): comparable across steps and runs."""
        noise, timesteps = [], []
        for index in batch["index"].tolist():
            g = torch.Generator().manual_seed(seed * 1_000_003 + index)
            noise.append(torch.randn(batch["latents"].shape[1:], generator=g))
            timesteps.append(torch.randint(0, self.schedule.steps, (1,), generator=g))
        device = batch["latents"].device
        return self.losses(batch, torch.stack(noise).to(device), torch.cat(timesteps).to(device))

    def collate(self, samples: Sequence[dict]) -> dict:
        return collate_umm(list(samples))
