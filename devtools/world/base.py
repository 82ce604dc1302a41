"""Pre-training the world's base, standing in for SD1.5 + ELLA: a UNet in SD1.5 layout and a smaller ELLA
connector in the released layout, trained together on captioned world pictures over the frozen stand-in
flan-T5, with the pack's training loop (emma_core.train.loop).

- UNet: ComfyUI's own UNetModel with model_channels 320 and context 768 (what ComfyUI's model detection calls
  SD1.5). "two-level" (the full schedule): one residual block per level, a transformer on the lower level and in
  the middle: 36.7 M parameters, 1.85 GFLOP per 8x8 latent. "one-level" (the 32 px `ci` schedule, the demo's): one
  level, one residual block, a transformer in each block, none in the middle: 21.0 M parameters. At 32 px (a 4 x 4
  latent) a training step is bound by the parameter-sized work (weight gradients, AdamW), not by the pixels, so
  the parameter count sets that world's budget. "two-level-attn" (the shape-48 schedule, CI's): the two-level one
  with cross-attention at the full latent resolution too, 39.2 M parameters.
- ELLA: the released layout (time embedding, latents, AdaLN resampler blocks, no output projection) at width
  768 (the UNet's cross-attention width); 2 blocks and 16 latents in the full schedule, 1 and 8 in CI. T5
  features 2048-d from the stand-in encoder. The file carries its configuration (ELLA format v2).
- Objective: SD1.5's epsilon prediction on its DDPM schedule, min-SNR-5 loss weighting (it converges several
  times faster than the plain mean; the optimum is the same), 10 % text dropout (the empty prompt: ELLA's
  negative), AdamW. Timesteps uniform, or drawn towards high noise (`timestep_power`, the shape-48 schedule).
- Batches hold captions of one T5 length: the connector has no attention mask, so texts are never padded, and
  one length per batch means one connector call (pictures are grouped into such batches once per build).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emma_core.ella import ELLA, ELLAConfig
from emma_core.train.schedule import DDPMSchedule

_SD15 = dict(image_size=8, in_channels=4, out_channels=4, model_channels=320, num_heads=8, num_head_channels=-1,
             context_dim=768, use_spatial_transformer=True, use_linear_in_transformer=False, legacy=False,
             adm_in_channels=None)
UNETS = {
    "two-level": dict(_SD15, num_res_blocks=[1, 1], channel_mult=[1, 1], transformer_depth=[0, 1],
                      transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=1),
    "one-level": dict(_SD15, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
                      transformer_depth_output=[1, 1], transformer_depth_middle=-1),
}
# The two-level UNet with a transformer in the first output block of the full latent resolution too (ComfyUI
# pops transformer_depth_output from the end): cross-attention where the outline is drawn; 39.2 M parameters.
# At 48 px the plain two-level learned outlines but not colour, the one-level colour but not outlines; this one
# both (docs/world.md, "Toward a CI world that reads shape").
UNETS["two-level-attn"] = dict(UNETS["two-level"], transformer_depth_output=[0, 1, 1, 1])
MIN_SNR_GAMMA = 5.0


def ella_config(layers: int, latents: int) -> ELLAConfig:
    return ELLAConfig(time_channels=320, time_embed_dim=768, width=768, layers=layers, heads=8,
                      num_latents=latents, input_dim=2048)


def build_unet(kind: str, seed: int = 0):
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from devtools.standins import reset_all_parameters, seeded

    with seeded(seed):
        return reset_all_parameters(UNetModel(**UNETS[kind]))


def build_ella(config: ELLAConfig, seed: int = 0) -> ELLA:
    from devtools.standins import seeded

    with seeded(seed + 1):
        return ELLA(config)


def length_batches(lengths: list[int], batch: int, seed: int) -> list[list[int]]:
    """Indices grouped by T5 length, cut into batches of at most `batch` (a shuffled order within a length)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for length in sorted(set(lengths)):
        rows = [i for i, n in enumerate(lengths) if n == length]
        rows = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
        out += [rows[i:i + batch] for i in range(0, len(rows), batch)]
    return out


@dataclass
class BatchDataset:
    """Each sample is a whole batch of one caption length (the loop runs with batch_size 1)."""

    latents: torch.Tensor          # [N, 4, h, w]
    texts: list                    # [N] of [n_i, 2048]
    batches: list                  # lists of indices into latents/texts
    empty_text: torch.Tensor

    def __len__(self) -> int:
        return len(self.batches)

    def sample(self, index: int) -> dict:
        rows = self.batches[index]
        return {"latents": self.latents[rows], "text": torch.stack([self.texts[i] for i in rows]),
                "rows": torch.tensor(rows), "index": index}


class BaseTask(nn.Module):
    """forward(batch, generator) -> loss for the loop; `trainable` is the UNet and the connector."""

    def __init__(self, unet: nn.Module, ella: ELLA, empty_text: torch.Tensor, text_dropout: float = 0.1,
                 timestep_power: float = 1.0):
        super().__init__()
        self.trainable = nn.ModuleDict({"unet": unet, "ella": ella})
        self.schedule = DDPMSchedule()
        self.empty_text = empty_text
        self.text_dropout = text_dropout
        self.timestep_power = timestep_power
        alphas = self.schedule.alphas_cumprod
        snr = alphas / (1 - alphas)
        self.register_buffer("weights", torch.clamp(snr, max=MIN_SNR_GAMMA) / snr, persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def collate(self, samples: list[dict]) -> dict:
        if len(samples) != 1:
            raise ValueError("each sample of a BatchDataset is a whole batch: train with batch_size 1")
        return samples[0]

    def context(self, text: torch.Tensor, timesteps: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Connector output per row: kept rows share the batch's length, dropped rows the empty prompt's."""
        ella = self.trainable["ella"]
        out = torch.empty(text.shape[0], ella.config.num_latents, ella.config.width, device=text.device)
        if bool(keep.any()):
            out[keep] = ella(text[keep], timesteps[keep].float())
        if bool((~keep).any()):
            empty = self.empty_text.to(text.device)[None].expand(int((~keep).sum()), -1, -1)
            out[~keep] = ella(empty, timesteps[~keep].float())
        return out

    def losses(self, batch: dict, noise: torch.Tensor, timesteps: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        noisy = self.schedule.add_noise(batch["latents"], noise, timesteps)
        prediction = self.trainable["unet"](noisy, timesteps.float(), self.context(batch["text"], timesteps, keep))
        per_row = F.mse_loss(prediction, noise, reduction="none").flatten(1).mean(1)
        return per_row * self.weights.to(per_row.device)[timesteps]

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        b = batch["latents"].shape[0]
        noise = torch.randn(batch["latents"].shape, generator=generator)
        timesteps = self.draw_timesteps(b, generator)
        keep = torch.rand(b, generator=generator) >= self.text_dropout
        return self.losses(batch, noise, timesteps, keep).mean()

    def draw_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform timesteps, or with `timestep_power` p < 1 t = floor(T u^p): more of the high-noise steps, where
        the picture's layout (the outline) is chosen; p = 1 keeps the uniform draw exactly (the full schedule)."""
        if self.timestep_power == 1.0:
            return torch.randint(0, self.schedule.steps, (count,), generator=generator)
        u = torch.rand(count, generator=generator)
        return (u ** self.timestep_power * self.schedule.steps).long().clamp(0, self.schedule.steps - 1)

    @torch.no_grad()
    def validation_losses(self, batch: dict) -> torch.Tensor:
        rows = batch["rows"].tolist()
        draws = [torch.Generator().manual_seed(1_000_003 + r) for r in rows]
        noise = torch.stack([torch.randn(batch["latents"].shape[1:], generator=g) for g in draws])
        timesteps = torch.cat([torch.randint(0, self.schedule.steps, (1,), generator=g) for g in draws])
        return self.losses(batch, noise, timesteps, torch.ones(len(rows), dtype=torch.bool))


def checkpoint_tensors(unet: nn.Module, vae_tensors: dict, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """An SD1.5 single-file checkpoint: the UNet under model.diffusion_model., the VAE under
    first_stage_model.; no CLIP (ELLA replaces it; ComfyUI then loads no text encoder and says so)."""
    out = {f"model.diffusion_model.{k}": v.detach().to(dtype) for k, v in unet.state_dict().items()}
    out.update({k: v.detach().float() for k, v in vae_tensors.items()})
    return out
