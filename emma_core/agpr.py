"""EMMA's Assemblable Gated Perceiver Resampler (AGPR) block: one gated branch after one frozen PR block.

Paper (arXiv 2406.09162), per block, for a single condition C:

    L = L + lambda * AttnGate * TimeAwareAttn(L, C, t)       AttnGate = Linear(L)[0] * A
    L = L + lambda * FFNGate  * TimeAwareFFN(L, t)           FFNGate  = Linear(L)[1] * F

This project's design (docs/emma-design.md): the separable gate Linear(L) is squashed with a sigmoid and the global gates
are used as tanh(A), tanh(F) with A = F = 0 at initialisation, as in flamingo's gated cross-attention.

The block never adds to the stream itself in `attention_residual` / `ffn_residual`: several branches must
be summed into the SAME stream between the two steps (see assemble.py), so each step returns its gated
residual and the caller does the addition. `forward` is the single-branch case, for training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ella import AdaLayerNorm, SquaredReLUMLP

ATTENTION, FFN = 0, 1  # channels of the separable gate


class TimeAwareAttention(nn.Module):
    """The PR block's attention, with the condition tokens in place of the text.

    Keys/values are the (normalised) latents concatenated with the condition tokens, exactly like ELLA's
    blocks, so a branch can also keep attending to the text-derived latents it modulates.
    """

    def __init__(self, width: int, heads: int, time_embed_dim: int):
        super().__init__()
        self.ln_latents = AdaLayerNorm(width, time_embed_dim)
        self.ln_condition = AdaLayerNorm(width, time_embed_dim)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, latents: torch.Tensor, condition: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        queries = self.ln_latents(latents, time_embedding)
        keys_values = torch.cat([queries, self.ln_condition(condition, time_embedding)], dim=1)
        return self.attn(queries, keys_values, keys_values, need_weights=False)[0]


class TimeAwareFFN(nn.Module):
    def __init__(self, width: int, time_embed_dim: int):
        super().__init__()
        self.ln = AdaLayerNorm(width, time_embed_dim)
        self.mlp = SquaredReLUMLP(width, width * 4)

    def forward(self, latents: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln(latents, time_embedding))


class AGPRBlock(nn.Module):
    def __init__(self, width: int = 768, heads: int = 8, time_embed_dim: int = 768):
        super().__init__()
        self.attn = TimeAwareAttention(width, heads, time_embed_dim)
        self.ffn = TimeAwareFFN(width, time_embed_dim)
        # Per-token "separable" gates: the paper's ablation shows they matter (style CLIP-T 0.594 -> 0.572
        # without them); they let a branch act on some latent tokens and leave the others to the text.
        self.separable_gate = nn.Linear(width, 2)
        # Global gates A and F. Zero makes an untrained branch an exact identity (tanh(0) = 0) while the
        # gradient d tanh / dA = 1 at 0 still reaches them, so training can open them.
        self.global_gate_attn = nn.Parameter(torch.zeros(()))
        self.global_gate_ffn = nn.Parameter(torch.zeros(()))

    def _gate(self, latents: torch.Tensor, channel: int, global_gate: torch.Tensor) -> torch.Tensor:
        """[B, N, 1]: sigmoid(Linear(L)[channel]) * tanh(global gate), computed on the tokens given."""
        weight = self.separable_gate.weight[channel: channel + 1]
        bias = self.separable_gate.bias[channel: channel + 1]
        return torch.sigmoid(F.linear(latents, weight, bias)) * torch.tanh(global_gate)

    def attention_residual(
        self, latents: torch.Tensor, condition: torch.Tensor, time_embedding: torch.Tensor, scale: float = 1.0
    ) -> torch.Tensor:
        """lambda * AttnGate(L) * TimeAwareAttn(L, C, t): the gate is taken on the block's input tokens."""
        gate = self._gate(latents, ATTENTION, self.global_gate_attn)
        return scale * gate * self.attn(latents, condition, time_embedding)

    def ffn_residual(self, latents: torch.Tensor, time_embedding: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """lambda * FFNGate(L) * TimeAwareFFN(L, t), on L after the (summed) attention residuals."""
        gate = self._gate(latents, FFN, self.global_gate_ffn)
        return scale * gate * self.ffn(latents, time_embedding)

    def forward(
        self, latents: torch.Tensor, condition: torch.Tensor, time_embedding: torch.Tensor, scale: float = 1.0
    ) -> torch.Tensor:
        latents = latents + self.attention_residual(latents, condition, time_embedding, scale)
        return latents + self.ffn_residual(latents, time_embedding, scale)
