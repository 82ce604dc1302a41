"""SD1.5's DDPM noise schedule and the paper's learning-rate warm-up."""
from __future__ import annotations

import math

import torch

# SD1.5 (and ComfyUI's ModelSamplingDiscrete for it): "scaled linear" betas, 1000 steps, epsilon target.
BETA_START, BETA_END, TIMESTEPS = 0.00085, 0.012, 1000


def scaled_linear_alphas_cumprod(beta_start: float = BETA_START, beta_end: float = BETA_END,
                                 steps: int = TIMESTEPS) -> torch.Tensor:
    """alpha_bar_t for t = 0..steps-1 (float64 math, float32 result), as SD1.5 and ComfyUI compute it."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class DDPMSchedule:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps; the denoiser predicts eps (SD1.5's objective)."""

    def __init__(self, alphas_cumprod: torch.Tensor | None = None):
        self.alphas_cumprod = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.float()

    @property
    def steps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(x0.device)[timesteps].float().view(-1, *([1] * (x0.ndim - 1)))
        return (a.sqrt() * x0.float() + (1.0 - a).sqrt() * noise.float()).to(x0.dtype)


def warmup_factor(step: int, warmup_iters: int = 1000, start: float = 0.1) -> float:
    """Linear warm-up of the learning rate from `start` x lr to lr over `warmup_iters` optimizer steps
    (paper: 10% -> 100% over 1000 iterations), then constant. `step` counts completed steps."""
    if warmup_iters <= 0:
        return 1.0
    return start + (1.0 - start) * min(1.0, step / warmup_iters)


def cosine_factor(step: int, warmup_iters: int, total: int, end: float = 1.0) -> float:
    """1 until the end of warm-up, then a cosine from 1 to `end` at step `total` (end 1.0: constant)."""
    if end >= 1.0 or step <= warmup_iters or total <= warmup_iters:
        return 1.0
    progress = min(1.0, (step - warmup_iters) / (total - warmup_iters))
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
