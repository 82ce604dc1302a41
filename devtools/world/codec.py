"""The world's VAE: ComfyUI's TAESD architecture with a fixed, hand-set encoder and a trained decoder.

Encoder (no training; every weight is set here): per 8x8 pixel cell, the mean red, green and blue, and the
mean luminance-gradient energy (|dx| + |dy|), as four latent channels:

    z_rgb = 4 (mean rgb - 0.5)          in [-2, 2]
    z_edge = EDGE_GAIN mean(|dL/dx| + |dL/dy|) + EDGE_BIAS

It is built from TAESD's own layers: the first 3x3 convolution computes r, g, b and the four signed luminance
differences (whose ReLU in the next block gives |dx| and |dy|), the residual blocks are identities (their
convolutions are zero), each stride-2 convolution is an exact 2x2 average, and the last convolution mixes the
channels into the four latents. So the UNet's latents are known as soon as the pictures are, and the world's
latent space means something a reader can check (its first three channels are a colour thumbnail).

Decoder: TAESD's decoder, started as the encoder's colour inverse (upsampling the cell colours) with its
residual blocks at identity (last convolution zero), then trained on world pictures to draw sharp outlines
and patterns from the cells.

Files: `taesd_encoder.safetensors` / `taesd_decoder.safetensors` in madebyollin's layout, which ComfyUI's stock
VAELoader lists as "taesd" (SD1.5 latent scale 0.18215), and the same tensors under `first_stage_model.` in
the world's checkpoint, which CheckpointLoaderSimple turns into the same VAE.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

EDGE_GAIN, EDGE_BIAS = 16.0, -1.1
LATENT_SCALE = 0.18215  # ComfyUI's SD1.5 latent format: the UNet sees (raw latent) * this, i.e. the encoder's output
ENCODER_CHANNELS = ("r", "g", "b", "+dx", "-dx", "+dy", "-dy")


def _block_identity(block) -> None:
    for conv in block.conv:
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)


@torch.no_grad()
def fixed_encoder():
    """TAESD's Encoder with the hand-set weights described above (ComfyUI's class)."""
    from comfy.taesd.taesd import Block, Encoder

    encoder = Encoder(latent_channels=4)
    first, last = encoder[0], encoder[-1]
    for module in encoder:
        if isinstance(module, Block):
            _block_identity(module)
        elif isinstance(module, torch.nn.Conv2d) and module.stride == (2, 2):
            module.weight.zero_()
            for channel in range(module.weight.shape[0]):
                module.weight[channel, channel, 1:, 1:] = 0.25  # rows/cols 2i, 2i+1: an exact 2x2 average
    first.weight.zero_()
    first.bias.zero_()
    for channel in range(3):
        first.weight[channel, channel, 1, 1] = 1.0
    third = 1.0 / 3.0
    for channel, (dy, dx, sign) in zip(range(3, 7), ((1, 2, 1), (1, 2, -1), (2, 1, 1), (2, 1, -1))):
        first.weight[channel, :, dy, dx] = sign * third   # L(x+1) or L(y+1) ...
        first.weight[channel, :, 1, 1] = -sign * third    # ... minus L(x)
    last.weight.zero_()
    last.bias.zero_()
    for channel in range(3):
        last.weight[channel, channel, 1, 1] = 4.0
        last.bias[channel] = -2.0
    last.weight[3, 3:7, 1, 1] = EDGE_GAIN  # ReLU(d) + ReLU(-d) = |d|: the four channels sum to |dx| + |dy|
    last.bias[3] = EDGE_BIAS
    return encoder.eval().requires_grad_(False)


def initial_decoder(seed: int = 0):
    """TAESD's Decoder as the encoder's colour inverse: sharp outlines are what training adds."""
    from comfy.taesd.taesd import Block, Decoder

    from devtools.standins import reset_all_parameters, seeded

    with seeded(seed):
        decoder = reset_all_parameters(Decoder(latent_channels=4))
    with torch.no_grad():
        for module in decoder:
            if isinstance(module, Block):
                last = module.conv[-1]
                torch.nn.init.zeros_(last.weight)
                torch.nn.init.zeros_(last.bias)
            elif isinstance(module, torch.nn.Conv2d) and module.bias is None:  # after each upsampling
                module.weight.zero_()
                for channel in range(module.weight.shape[0]):
                    module.weight[channel, channel, 1, 1] = 1.0
        first, last = decoder[1], decoder[-1]
        first.weight[:3].zero_()
        first.bias[:3] = 3.0  # colour channels kept positive through the ReLUs: 3 + z
        for channel in range(3):
            first.weight[channel, channel, 1, 1] = 1.0
        last.weight.zero_()
        for channel in range(3):
            last.weight[channel, channel, 1, 1] = 0.25
            last.bias[channel] = 0.5 - 0.75
    return decoder


def load_decoder(path: Optional[Path] = None):
    """The decoder for sampling: `path`'s weights (a taesd_decoder.safetensors), or the initial one without it."""
    decoder = initial_decoder()
    if path is not None:
        from safetensors.torch import load_file

        decoder.load_state_dict(load_file(str(path)))
    return decoder.eval().requires_grad_(False).to(torch.float32)


def encode(encoder, pictures: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1] -> model-space latents [B, 4, H/8, W/8] (what the UNet sees)."""
    with torch.no_grad():
        return encoder(pictures.movedim(-1, 1).float())


def decode(decoder, latents: torch.Tensor) -> torch.Tensor:
    """Model-space latents -> [B, H, W, 3] in [0, 1]."""
    return decoder(latents.float()).clamp(0, 1).movedim(1, -1)


def decoder_optimizer(decoder, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)


def train_decoder(decoder, encoder, pictures: Callable[[int, int], np.ndarray], steps: int, optimizer,
                  batch: int = 16, lr: float = 1e-3, crop_cells: int = 4, log: Optional[Callable[[str], None]] = None,
                  start_step: int = 0, checkpoint: Optional[Callable[[int], None]] = None,
                  checkpoint_every: int = 100) -> None:
    """Train the decoder on random crops of `crop_cells` x `crop_cells` latent cells of world pictures
    (`pictures(step, batch)` -> [batch, H, W, 3]); L1 + MSE, cosine decay of `lr`; `checkpoint(step)` every
    `checkpoint_every` steps and at the end."""
    decoder.train().requires_grad_(True)
    t0 = time.perf_counter()
    for step in range(start_step, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        batch_pictures = torch.from_numpy(pictures(step, batch))
        latents = encode(encoder, batch_pictures)
        g = torch.Generator().manual_seed(step)
        cells = latents.shape[-1]
        y, x = (int(v) for v in torch.randint(0, cells - crop_cells + 1, (2,), generator=g))
        latents = latents[..., y:y + crop_cells, x:x + crop_cells]
        target = batch_pictures.movedim(-1, 1)[..., 8 * y:8 * (y + crop_cells), 8 * x:8 * (x + crop_cells)]
        out = decoder(latents)
        loss = F.l1_loss(out, target) + F.mse_loss(out, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None and (step + 1) % 50 == 0:
            log(f"decoder step {step + 1}/{steps} loss {loss.detach().item():.4f} ({time.perf_counter() - t0:.0f} s)")
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            checkpoint(step + 1)


def save_taesd(encoder, decoder, folder: Path) -> tuple[Path, Path]:
    """The two files ComfyUI's VAELoader lists as "taesd" (models/vae_approx)."""
    from emma_core.atomic import save_safetensors_atomic

    folder = Path(folder)
    paths = folder / "taesd_encoder.safetensors", folder / "taesd_decoder.safetensors"
    save_safetensors_atomic(paths[0], encoder.state_dict(), {"world": "fixed hand-set encoder"})
    save_safetensors_atomic(paths[1], decoder.state_dict(), {"world": "decoder trained on world pictures"})
    return paths


def checkpoint_vae_tensors(encoder, decoder) -> dict[str, torch.Tensor]:
    """The VAE part of the world's checkpoint: CheckpointLoaderSimple builds a TAESD from these keys."""
    out = {f"first_stage_model.taesd_encoder.{k}": v for k, v in encoder.state_dict().items()}
    out.update({f"first_stage_model.taesd_decoder.{k}": v for k, v in decoder.state_dict().items()})
    out["first_stage_model.vae_scale"] = torch.tensor(LATENT_SCALE)
    out["first_stage_model.vae_shift"] = torch.tensor(0.0)
    return out
