"""Assembling several EMMA modules into one ELLA call, without retraining (paper, "assemblable").

Inside PR block i's slot, every active module's AGPR block adds its gated residual to the SAME stream:

    L = L + sum_m lambda_m * AttnGate_m(L) * TimeAwareAttn_m(L, C_m, t)
    L = L + sum_m lambda_m * FFNGate_m(L)  * TimeAwareFFN_m(L, t)

with lambda_m = gate_scale_m (from the file) * the user's weight at this step. Summing instead of chaining
is what makes the order of the modules irrelevant and each module see the stream it was trained on.

Usage per connector call (the node layer owns progress and caching):

    branches = branches_at(inputs, progress)
    context = ella(text, timesteps, after_block=assembled_after_block(branches))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .adapters import Features
from .ella import AfterBlock
from .emma_module import EMMAModule


@dataclass
class ConditionInput:
    """One condition as the user wired it: a module, its encoder features, and when and how strongly."""

    module: EMMAModule
    features: Features
    weight: float = 1.0
    start: float = 0.0  # fractions of the denoising schedule, as ComfyUI's start_percent/end_percent:
    end: float = 1.0    # 0 = the first step (highest noise), 1 = the end of sampling


def active_weight(weight: float, start: float, end: float, progress: float) -> float:
    """The weight to use at `progress`, or 0.0 when progress is outside [start, end] (both inclusive).

    Contract: `progress` in [0, 1] is where the current sigma lies along the schedule, i.e. the p with
    model_sampling.percent_to_sigma(p) == sigma. Because percent_to_sigma decreases, the node layer may
    equally test `percent_to_sigma(end) <= sigma <= percent_to_sigma(start)`, which is how ComfyUI applies
    its own timestep ranges (ConditioningSetTimestepRange): same result, inclusive at both ends.
    start > end gives a range that is never active, as in ComfyUI.
    """
    return float(weight) if start <= progress <= end else 0.0


@dataclass
class Branch:
    """An active module at one connector call: its condition tokens (computed once) and its weight."""

    module: EMMAModule
    tokens: torch.Tensor  # [1 or B, n, 768], from module.condition_tokens(features)
    weight: float


def branches_at(inputs: Iterable[ConditionInput], progress: float) -> list[Branch]:
    """The branches active at `progress`; inactive ones and weight 0 are left out (adapter not run)."""
    branches = []
    for item in inputs:
        weight = active_weight(item.weight, item.start, item.end, progress)
        if weight != 0.0:
            branches.append(Branch(item.module, item.module.condition_tokens(item.features), weight))
    return branches


def _batched(branch: Branch, rows: int) -> torch.Tensor:
    tokens = branch.tokens
    if tokens.shape[0] == rows:
        return tokens
    if tokens.shape[0] == 1:
        return tokens.expand(rows, -1, -1)
    raise ValueError(f"EMMA {branch.module.config.modality} features have {tokens.shape[0]} rows but the ELLA "
                     f"latents have {rows}: give one image (used for every row) or one per row")


def assembled_after_block(branches: Sequence[Branch]) -> AfterBlock:
    """ELLA's `after_block` hook that adds every branch's summed gated residuals after each PR block.

    Branches with lambda 0 (weight 0 or gate scale 0) are skipped entirely, not multiplied by 0, so they
    cannot add floating-point noise; with no branch left the hook returns ELLA's latents untouched.
    """
    branches = [b for b in branches if b.weight * b.module.config.gate_scale != 0.0]

    def after_block(index: int, latents: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        if not branches:
            return latents
        rows = latents.shape[0]
        active = []  # (AGPR block, lambda, condition tokens, the block's dtype)
        for branch in branches:
            blocks = branch.module.branch
            if index >= len(blocks):
                raise ValueError(f"EMMA {branch.module.config.modality} module has {len(blocks)} blocks, "
                                 f"but ELLA called block {index}")
            # A module may run in another dtype than ELLA: compute in the module's, add in ELLA's.
            dtype = blocks[index].separable_gate.weight.dtype
            scale = branch.module.config.gate_scale * branch.weight
            active.append((blocks[index], scale, _batched(branch, rows).to(dtype), dtype))

        attn = sum(block.attention_residual(latents.to(dtype), tokens, time_embedding.to(dtype), scale)
                   .to(latents.dtype) for block, scale, tokens, dtype in active)
        latents = latents + attn
        ffn = sum(block.ffn_residual(latents.to(dtype), time_embedding.to(dtype), scale).to(latents.dtype)
                  for block, scale, tokens, dtype in active)
        return latents + ffn

    return after_block
