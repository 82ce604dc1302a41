"""What an ELLA prompt carries through the graph, and its cross-attention context at a timestep."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .ella import ELLA


@dataclass
class ELLAPrompt:
    """T5 features on their true length (never padded: the connector has no attention mask)."""

    text_features: torch.Tensor  # [N, 2048] float32, CPU
    clip_tokens: Optional[torch.Tensor] = None  # [77k, 768]: appended after the connector's tokens
    # Extra arguments for the connector call; EMMA puts its assembled branches here.
    extras: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.text_features.shape[0]

    def context(self, connector: ELLA, timesteps: torch.Tensor) -> torch.Tensor:
        """[1, T, 768] when every row shares one timestep (the usual case), else [B, T, 768]."""
        param = next(connector.parameters())
        timesteps = timesteps.reshape(-1).to(param.device, torch.float32)
        if bool((timesteps == timesteps[0]).all()):
            timesteps = timesteps[:1]
        text = self.text_features.to(param.device, param.dtype).unsqueeze(0)
        tokens = connector(text, timesteps, **self.extras)
        if self.clip_tokens is not None:
            clip = self.clip_tokens.to(tokens.device, tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens, clip], dim=1)
        return tokens
