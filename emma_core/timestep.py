import math

import torch


def sinusoid(timesteps: torch.Tensor, width: int = 320, max_period: float = 10000.0) -> torch.Tensor:
    """DDPM timestep -> [B, width] sinusoid, cosine half first (ELLA's and SD's convention)."""
    timesteps = torch.as_tensor(timesteps, dtype=torch.float32).reshape(-1)
    half = width // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    angles = timesteps[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
