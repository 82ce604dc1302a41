"""EMMA's training objective: SD1.5's DDPM epsilon-prediction loss through frozen ELLA + frozen UNet.

Only the EMMA module (feature adapter + AGPR branch) trains. The denoiser is any callable

    denoiser(noisy_latents [B, 4, h, w], timesteps [B] long, context [B, 64, 768]) -> eps prediction

so the same task runs with ComfyUI's UNet (comfy_epsilon_denoiser below), a bare diffusers-style UNet, or a
small torch network in tests. Nothing here imports ComfyUI.

Classifier-free guidance needs the model to have seen both halves of its guidance pairs:
- condition dropout (per row, default 10%): the branch's residuals are multiplied by 0 for that row, which is
  exactly what inference does for a negative without the module (the untrained identity of EMMA);
- text dropout (per row, default 10%): the caption's T5 features are replaced by those of "" (ELLA's negative).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import Features
from ..assemble import Branch, assembled_after_block
from ..ella import Group
from .schedule import DDPMSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def collate(samples: list[dict], feature_kind: str) -> dict:
    """Samples from a dataset (cache.CachedDataset.sample) -> a batch on the CPU."""
    names = set().union(*(s["features"] for s in samples))
    features = {}
    for name in sorted(names):
        rows = []
        for s in samples:
            if name in s["features"]:
                rows.append(s["features"][name])
            elif name == "mask":  # an object image without a mask: the whole image is the object
                rows.append(torch.ones_like(next(x["features"]["mask"] for x in samples if "mask" in x["features"])))
            else:
                raise ValueError(f"sample {s['index']} has no {name!r} condition features")
        features[name] = torch.stack(rows)
    return {"latents": torch.stack([s["latents"] for s in samples]), "text": [s["text"] for s in samples],
            "features": Features(feature_kind, features),
            "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long)}


@dataclass
class Draw:
    """The random choices of one batch: noise, timesteps and which rows keep their text / condition."""

    noise: torch.Tensor
    timesteps: torch.Tensor
    keep_text: torch.Tensor  # [B] bool
    keep_cond: torch.Tensor  # [B] bool


def comfy_epsilon_denoiser(base_model) -> Denoiser:
    """ComfyUI's model apply (BaseModel.apply_model: its dtype casts, patches and wrappers) as an epsilon
    predictor on DDPM timesteps. Duck-typed: `base_model` is a comfy.model_base.BaseModel (SD1.5, eps).

    apply_model takes x at noise level sigma (x0 + sigma * eps) and returns the denoised x0; with
    x_sigma = x_t * sqrt(1 + sigma^2) it feeds the UNet exactly x_t at the DDPM timestep, so
    eps = (x_sigma - denoised) / sigma is the UNet's own output.
    """
    sigmas = base_model.model_sampling.sigmas

    def denoise(noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        sigma = sigmas.to(noisy.device)[timesteps].float()
        s = sigma.view(-1, 1, 1, 1)
        x_sigma = noisy.float() * (1.0 + s ** 2).sqrt()
        denoised = base_model.apply_model(x_sigma, sigma, c_crossattn=context)
        return (x_sigma - denoised.float()) / s

    return denoise


class EMMATask(nn.Module):
    """forward(batch, generator) -> scalar loss. The only registered sub-module is `trainable` (the EMMA
    module), so the optimiser, DDP and checkpoints see exactly the trainable weights."""

    def __init__(self, module: nn.Module, ella: nn.Module, denoiser: Denoiser, schedule: Optional[DDPMSchedule] = None,
                 empty_text: Optional[torch.Tensor] = None, cond_dropout: float = 0.1, text_dropout: float = 0.1,
                 noise_offset: float = 0.0, gradient_checkpointing: bool = False):
        super().__init__()
        self.trainable = module
        # Frozen parts are kept out of the module tree on purpose (not trained, not saved, not synced).
        self.__dict__["ella"] = ella.requires_grad_(False).eval()
        if isinstance(denoiser, nn.Module):
            denoiser.requires_grad_(False).eval()
        self.__dict__["denoiser"] = denoiser
        self.schedule = schedule or DDPMSchedule()
        self.empty_text = empty_text
        self.cond_dropout, self.text_dropout = float(cond_dropout), float(text_dropout)
        self.noise_offset = float(noise_offset)
        self.gradient_checkpointing = gradient_checkpointing
        if (text_dropout > 0) and empty_text is None:
            raise ValueError("text dropout needs the T5 features of the empty prompt (empty_text)")

    @property
    def device(self) -> torch.device:
        return next(self.trainable.parameters()).device

    # ---- randomness -------------------------------------------------------------------------------
    def draw(self, batch: dict, generator: torch.Generator) -> Draw:
        """A training step's randomness: noise, timesteps and which rows drop their text or condition."""
        latents = batch["latents"]
        b, device = latents.shape[0], latents.device
        noise = torch.randn(latents.shape, generator=generator, device=device)
        if self.noise_offset:
            noise = noise + self.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator,
                                                            device=device)
        timesteps = torch.randint(0, self.schedule.steps, (b,), generator=generator, device=device)
        u = torch.rand((2, b), generator=generator, device=device)
        return Draw(noise, timesteps, u[0] >= self.text_dropout, u[1] >= self.cond_dropout)

    def validation_draw(self, batch: dict, seed: int = 1234) -> Draw:
        """The same noise and timestep for a given sample in every evaluation (keyed by its index), no
        dropout: validation losses are comparable across steps and runs."""
        rows = []
        for i, index in enumerate(batch["index"].tolist()):
            g = torch.Generator().manual_seed(seed * 1_000_003 + index)
            rows.append((torch.randn(batch["latents"].shape[1:], generator=g),
                         torch.randint(0, self.schedule.steps, (1,), generator=g)))
        device = batch["latents"].device
        b = len(rows)
        ones = torch.ones(b, dtype=torch.bool, device=device)
        return Draw(torch.stack([r[0] for r in rows]).to(device), torch.cat([r[1] for r in rows]).to(device), ones, ones)

    # ---- the model --------------------------------------------------------------------------------
    def context(self, texts: list[torch.Tensor], timesteps: torch.Tensor, features: Features,
                keep_cond: torch.Tensor) -> torch.Tensor:
        """ELLA's context with the module assembled in (assemble.assembled_after_block, the function inference
        uses), one row per sample; a row whose condition is dropped gets weight 0. Rows are grouped by text
        length: the connector has no attention mask, so texts are never padded (each row sees exactly what
        inference gives it). All groups go through one connector call (ELLA.forward_groups, as several prompts
        do at inference): what does not read the text runs once over the whole batch."""
        module = self.trainable
        tokens = module.condition_tokens(features)
        weight = keep_cond.to(tokens.dtype)
        ella_param = next(self.ella.parameters())
        lengths = [t.shape[0] for t in texts]
        groups, grouped_rows = [], []
        for length in sorted(set(lengths)):
            rows = [i for i, n in enumerate(lengths) if n == length]
            idx = torch.tensor(rows, device=tokens.device)
            text = torch.stack([texts[i] for i in rows]).to(ella_param.device, ella_param.dtype)
            groups.append(Group(text, len(rows), assembled_after_block([Branch(module, tokens[idx], weight[idx])])))
            grouped_rows += rows
        order = torch.tensor(grouped_rows, device=tokens.device)
        return self.ella.forward_groups(groups, timesteps[order].float())[torch.argsort(order)]

    def losses(self, batch: dict, draw: Draw) -> torch.Tensor:
        """Per-row MSE between the predicted and the true noise, [B] float32."""
        latents = batch["latents"]
        texts = batch["text"]
        if not bool(draw.keep_text.all()):
            empty = self.empty_text.to(latents.device)
            texts = [t if keep else empty for t, keep in zip(texts, draw.keep_text.tolist())]
        texts = [t.to(latents.device) for t in texts]
        noisy = self.schedule.add_noise(latents, draw.noise, draw.timesteps)

        def run(noisy, timesteps, *feature_tensors):
            features = Features(batch["features"].kind, dict(zip(names, feature_tensors)))
            context = self.context(texts, timesteps, features, draw.keep_cond)
            return self.denoiser(noisy, timesteps, context)

        names = list(batch["features"].tensors)
        tensors = [batch["features"].tensors[n].to(latents.device) for n in names]
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            prediction = checkpoint(run, noisy, draw.timesteps, *tensors, use_reentrant=False)
        else:
            prediction = run(noisy, draw.timesteps, *tensors)
        return F.mse_loss(prediction.float(), draw.noise.float(), reduction="none").flatten(1).mean(1)

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.losses(batch, self.draw(batch, generator)).mean()

    @torch.no_grad()
    def validation_losses(self, batch: dict, seed: int = 1234) -> torch.Tensor:
        return self.losses(batch, self.validation_draw(batch, seed))

    def collate(self, samples: list[dict]) -> dict:
        return collate(samples, self.trainable.config.feature_kind)
