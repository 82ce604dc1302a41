"""ELLA's Timestep-aware Semantic Connector (TSC), in the layout of the released SD1.5 checkpoint.

Module and parameter names follow `ella-sd1.5-tsc-t5xl.safetensors` exactly so the file loads strictly.
The resampler exposes an `after_block` hook: EMMA's gated branches run between its frozen blocks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from .timestep import sinusoid


@dataclass(frozen=True)
class ELLAConfig:
    """The defaults are the released SD1.5 connector; a connector file other than the released one carries
    its own (ella_file.py). `width` is also the UNet's cross-attention width (there is no output projection)."""

    time_channels: int = 320
    time_embed_dim: int = 768
    width: int = 768
    layers: int = 6
    heads: int = 8
    num_latents: int = 64
    input_dim: int = 2048

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ELLA config {f.name} must be a positive whole number, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"ELLA width {self.width} is not divisible by heads {self.heads}")
        if self.time_channels % 2:
            raise ValueError(f"ELLA time_channels must be even (cosine and sine halves), got {self.time_channels}")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ELLAConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ELLA config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def describe(self) -> str:
        return (f"width {self.width}, {self.layers} blocks, {self.heads} heads, {self.num_latents} latents, "
                f"time embedding {self.time_embed_dim}, text features {self.input_dim}")


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, sinusoid_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(sinusoid_features)))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, then shift and scale predicted from the time embedding (shift first)."""

    def __init__(self, width: int, time_embed_dim: int):
        super().__init__()
        self.linear = nn.Linear(time_embed_dim, width * 2)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)

    def forward(self, tokens: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(time_embedding)).chunk(2, dim=-1)
        return self.norm(tokens) * (1 + scale) + shift


class SquaredReLUMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(tokens)) ** 2)


class PerceiverResamplerBlock(nn.Module):
    """One PR block: latents attend to [latents; text], then a time-aware squared-ReLU MLP."""

    def __init__(self, width: int, heads: int, time_embed_dim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = AdaLayerNorm(width, time_embed_dim)
        self.ln_2 = AdaLayerNorm(width, time_embed_dim)
        self.ln_ff = AdaLayerNorm(width, time_embed_dim)
        self.mlp = SquaredReLUMLP(width, width * 4)

    def attention(self, latents: torch.Tensor, text: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """The block's attention update (its residual): latents and their text, rows that share one text."""
        queries = self.ln_1(latents, time_embedding)
        # No attention mask exists in the released model: every text token is attended to, which is
        # why padded text changes the result and prompts are run on their true length.
        text = self.ln_2(text, time_embedding)
        keys_values = torch.cat([queries, text.expand(queries.shape[0], -1, -1)], dim=1)
        return self.attn(queries, keys_values, keys_values, need_weights=False)[0]

    def feed_forward(self, latents: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        return latents + self.mlp(self.ln_ff(latents, time_embedding))

    def forward(self, latents: torch.Tensor, text: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(latents + self.attention(latents, text, time_embedding), time_embedding)


AfterBlock = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""after_block(block_index, latents, time_embedding) -> latents: where EMMA inserts its branches."""


@dataclass
class Group:
    """Rows of one connector call that share a text (and EMMA branches): several prompts of different
    lengths run in one call, each attending only to its own text, with no padding."""

    text: torch.Tensor                       # [1 or rows, N, input_dim]
    rows: int
    after_block: Optional[AfterBlock] = None


class PerceiverResampler(nn.Module):
    def __init__(self, config: ELLAConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(config.num_latents, config.width) * config.width**-0.5)
        self.time_aware_linear = nn.Linear(config.time_embed_dim, config.width)
        self.proj_in = nn.Linear(config.input_dim, config.width)
        self.perceiver_blocks = nn.ModuleList(
            PerceiverResamplerBlock(config.width, config.heads, config.time_embed_dim) for _ in range(config.layers)
        )

    def forward(
        self, text_features: torch.Tensor, time_embedding: torch.Tensor, after_block: Optional[AfterBlock] = None,
        rows: Optional[int] = None,
    ) -> torch.Tensor:
        # One text (batch 1) serves many timesteps: it is projected once and broadcast in the blocks.
        batch = max(text_features.shape[0], time_embedding.shape[0], rows or 1)
        return self.forward_groups([Group(text_features, batch, after_block)], time_embedding)

    def forward_groups(self, groups: list[Group], time_embedding: torch.Tensor) -> torch.Tensor:
        """Rows group after group; time_embedding [1 or all rows, 1, time_embed_dim]. What does not depend on
        the text (time modulation, MLPs) runs on all rows at once; attention and the EMMA branches per group,
        so every row is what a call for its group alone computes, within float rounding (prompt.CONTEXT_RTOL)."""
        batch = sum(g.rows for g in groups)
        latents = repeat(self.latents, "n d -> b n d", b=batch)
        latents = latents + self.time_aware_linear(F.silu(time_embedding))
        texts = [self.proj_in(g.text) for g in groups]
        bounds = [sum(g.rows for g in groups[:i]) for i in range(len(groups) + 1)]

        def rows_of(tensor: torch.Tensor, i: int) -> torch.Tensor:
            return tensor if tensor.shape[0] == 1 or len(groups) == 1 else tensor[bounds[i]:bounds[i + 1]]

        for index, block in enumerate(self.perceiver_blocks):
            update = [block.attention(rows_of(latents, i), text, rows_of(time_embedding, i))
                      for i, text in enumerate(texts)]
            latents = block.feed_forward(latents + (update[0] if len(update) == 1 else torch.cat(update)),
                                         time_embedding)
            if any(g.after_block is not None for g in groups):
                parts = [g.after_block(index, rows_of(latents, i), rows_of(time_embedding, i))
                         if g.after_block is not None else rows_of(latents, i) for i, g in enumerate(groups)]
                latents = parts[0] if len(parts) == 1 else torch.cat(parts)
        return latents


class ELLA(nn.Module):
    """T5 features [B, N, 2048] and DDPM timesteps -> SD1.5 cross-attention context [B, 64, 768]."""

    def __init__(self, config: ELLAConfig = ELLAConfig()):
        super().__init__()
        self.config = config
        self.time_embedding = TimestepEmbedding(config.time_channels, config.time_embed_dim)
        self.connector = PerceiverResampler(config)

    def embed_time(self, timesteps: torch.Tensor | float) -> torch.Tensor:
        """One timestep, or one per row -> [B, 1, time_embed_dim] in the module's dtype."""
        param = self.time_embedding.linear_1.weight
        sinus = sinusoid(torch.as_tensor(timesteps, device=param.device), self.config.time_channels)
        return self.time_embedding(sinus.to(param.dtype)).unsqueeze(1)

    def forward(
        self,
        text_features: torch.Tensor,
        timesteps: torch.Tensor | float,
        after_block: Optional[AfterBlock] = None,
        rows: Optional[int] = None,
    ) -> torch.Tensor:
        """`rows`: the batch to produce when neither the text nor the timesteps have it (e.g. one text at one
        timestep with one condition reference per row); each of text and timesteps has 1 row or that many."""
        time_embedding = self.embed_time(timesteps)
        texts, steps = text_features.shape[0], time_embedding.shape[0]
        batch = max(texts, steps, rows or 1)
        if texts not in (1, batch) or steps not in (1, batch):
            raise ValueError(f"ELLA got {texts} text rows and {steps} timesteps for {batch} rows; give one text "
                             "or one per row, and one timestep or one per row")
        return self.connector(text_features, time_embedding, after_block, rows=batch)

    def forward_groups(self, groups: list[Group], timesteps: torch.Tensor) -> torch.Tensor:
        """Several texts in one call: `groups` in row order, `timesteps` one per row of all groups together
        (or one for all). Row r of group g is the same row of `forward` called for g alone, within float
        rounding: a BLAS rounds a row differently with the shape of the product it is in."""
        return self.connector.forward_groups(groups, self.embed_time(timesteps))
