"""EMMA's training objective: SD1.5's DDPM epsilon-prediction loss through frozen ELLA + frozen UNet.

Only the EMMA module (feature adapter + AGPR branch) trains. The denoiser is any callable

    denoiser(noisy_latents [B, 4, h, w], timesteps [B] long, context [B, 64, 768]) -> eps prediction

so the same task runs with ComfyUI's UNet (comfy_epsilon_denoiser below), a bare diffusers-style UNet, or a
small torch network in tests. Nothing here imports ComfyUI.

Classifier-free guidance needs the model to have seen both halves of its guidance pairs:
- condition dropout (per row, default 10%): the branch's residuals are multiplied by 0 for that row, which is
  exactly what inference does for a negative without the module (the untrained identity of EMMA);
- text dropout (per row, default 10%): the caption's T5 features are replaced by those of "" (ELLA's negative).

Against overfitting a small set: each step reads one of the reference's augmented views (augment.py) at random,
and min-SNR-gamma weighting (Hang et al. 2023; weight min(SNR, gamma) / SNR for an epsilon target) can keep the
low-noise steps from dominating. Validation reads the reference as it is, unweighted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import Features
from ..assemble import Branch, assembled_after_block
from ..ella import Group
from . import checkpointing
from .schedule import DDPMSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def collate(samples: list[dict], feature_kind: str) -> dict:
    """Samples from a dataset (cache.CachedDataset.sample) -> a batch on the CPU. With augmented views
    ("views" in a sample): batch["views"] holds every row's views [B, V, ...] (view 0 the reference itself; a row
    with fewer repeats its last) and batch["view_count"] [B] how many each row really has."""
    names = set().union(*(s["features"] for s in samples))

    def row(s: dict, name: str, views: list[dict]) -> torch.Tensor:
        if name in views[0]:
            return torch.stack([v[name] for v in views])
        if name == "mask":  # an object image without a mask: the whole image is the object
            like = next(x["features"]["mask"] for x in samples if "mask" in x["features"])
            return torch.ones((len(views), *like.shape), dtype=like.dtype)
        raise ValueError(f"sample {s['index']} has no {name!r} condition features")

    per_sample = []
    for s in samples:
        extra = s.get("views") or {}
        count = next(iter(extra.values())).shape[0] if extra else 0
        per_sample.append([s["features"]] + [{k: v[i] for k, v in extra.items()} for i in range(count)])
    most = max(len(v) for v in per_sample)
    features, views = {}, {}
    for name in sorted(names):
        rows = [row(s, name, v) for s, v in zip(samples, per_sample)]
        features[name] = torch.stack([r[0] for r in rows])
        if most > 1:
            views[name] = torch.stack([torch.cat([r, r[-1:].expand(most - len(r), *r.shape[1:])]) for r in rows])
    batch = {"latents": torch.stack([s["latents"] for s in samples]), "text": [s["text"] for s in samples],
             "features": Features(feature_kind, features),
             "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long)}
    if most > 1:
        batch["views"] = Features(feature_kind, views)
        batch["view_count"] = torch.tensor([len(v) for v in per_sample], dtype=torch.long)
    return batch


@dataclass
class Draw:
    """The random choices of one batch: noise, timesteps and which rows keep their text / condition."""

    noise: torch.Tensor
    timesteps: torch.Tensor
    keep_text: torch.Tensor  # [B] bool
    keep_cond: torch.Tensor  # [B] bool
    view: Optional[torch.Tensor] = None  # [B] long: the reference view each row reads (None: the reference)


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
                 noise_offset: float = 0.0, gradient_checkpointing: Union[bool, str] = False,
                 min_snr_gamma: float = 0.0, checkpoint_unet: Optional[nn.Module] = None):
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
        self.min_snr_gamma = float(min_snr_gamma)
        # Gradient checkpointing per layer (checkpointing.py) of the frozen UNet (`checkpoint_unet`: the module or
        # ComfyUI's BaseModel holding it; else the denoiser when it is one) and of ELLA, during the training
        # forward only. True: checkpointing.DEFAULT_LAYERS; or a checkpointing.LAYER_SETS name.
        self.gradient_checkpointing = gradient_checkpointing
        if isinstance(gradient_checkpointing, str):
            checkpointing.layer_kinds(gradient_checkpointing)
        self.__dict__["checkpoint_unet"] = checkpointing.find_unet(
            checkpoint_unet if checkpoint_unet is not None else denoiser)
        if gradient_checkpointing and self.checkpoint_unet is None:
            checkpointing.log.warning("EMMA training: gradient checkpointing finds no UNet blocks in the denoiser "
                                      "(pass checkpoint_unet); the UNet runs without it")
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
        view = None
        if "view_count" in batch:
            pick = torch.rand((b,), generator=generator, device=device)
            view = (pick * batch["view_count"].to(device)).long().clamp(max=batch["view_count"].max() - 1)
        return Draw(noise, timesteps, u[0] >= self.text_dropout, u[1] >= self.cond_dropout, view)

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """min(SNR, gamma) / SNR per row (epsilon target); ones when min-SNR weighting is off."""
        if self.min_snr_gamma <= 0:
            return torch.ones(timesteps.shape, device=timesteps.device)
        a = self.schedule.alphas_cumprod.to(timesteps.device)[timesteps].float()
        snr = a / (1.0 - a)
        return snr.clamp(max=self.min_snr_gamma) / snr

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
        if draw.view is not None:  # each row reads its drawn view of the reference
            rows = torch.arange(latents.shape[0], device=latents.device)
            tensors = [batch["views"].tensors[n].to(latents.device)[rows, draw.view.to(latents.device)] for n in names]
        layers = self.gradient_checkpointing if isinstance(self.gradient_checkpointing, str) else (
            checkpointing.DEFAULT_LAYERS if self.gradient_checkpointing else "none")
        with checkpointing.checkpointed(self.checkpoint_unet, self.ella, layers, enabled=torch.is_grad_enabled()):
            prediction = run(noisy, draw.timesteps, *tensors)  # wrapped layers restored on leaving, even on errors
        return F.mse_loss(prediction.float(), draw.noise.float(), reduction="none").flatten(1).mean(1)

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        draw = self.draw(batch, generator)
        return (self.losses(batch, draw) * self.loss_weights(draw.timesteps)).mean()

    @torch.no_grad()
    def validation_losses(self, batch: dict, seed: int = 1234) -> torch.Tensor:
        return self.losses(batch, self.validation_draw(batch, seed))

    def collate(self, samples: list[dict]) -> dict:
        return collate(samples, self.trainable.config.feature_kind)
