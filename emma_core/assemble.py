"""Assembling EMMA modules into one ELLA call, without retraining (paper, "assemblable").

Inside PR block i's slot, every active module's AGPR block adds its gated residual to the SAME stream:

    L = L + sum_m lambda_m * AttnGate_m(L) * TimeAwareAttn_m(L, C_m, t)
    L = L + sum_m lambda_m * FFNGate_m(L)  * TimeAwareFFN_m(L, t)

with lambda_m = gate_scale_m (from the file) * the module's weight at this call. Summing instead of chaining
is what makes the order of the modules irrelevant and each module see the stream it was trained on.

This is the one implementation of the gated residual: inference (prompt.run_contexts, any number of
modules, a weight per row: its timestep's) and training (train.objective.EMMATask, one module, a weight per
row: 0 for rows whose condition is dropped) both build their `after_block` here.

    context = ella(text, timesteps, after_block=assembled_after_block([Branch(module, tokens, weight), ...]))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch

from .adapters import Features
from .ella import AfterBlock
from .emma_module import EMMAModule


@dataclass(frozen=True, eq=False)
class ConditionInput:
    """One condition as the user wired it: a module, its encoder features, and when and how strongly.

    Made once by the node (EMMA Condition) and read unchanged by sampling: the weight at a model call is
    `weight` inside [start, end] and 0 outside it (prompt.PromptRun holds it per timestep of a run), and
    becomes the branch's lambda in `_scale`. Compared and hashed by identity."""

    module: EMMAModule
    features: Features
    weight: float = 1.0
    start: float = 0.0  # fractions of the denoising schedule, as ComfyUI's start_percent/end_percent:
    end: float = 1.0    # 0 = the first step (highest noise), 1 = the end of sampling
    handle: Any = None  # what loaded `module` (nodes.handles.EMMAModuleHandle: name, patcher, load token);
    #                     never read here


@dataclass
class Branch:
    """A module taking part in one connector call: its condition tokens (computed once) and its weight,
    one number for every row or a tensor with one per row (training drops the condition of some rows)."""

    module: EMMAModule
    tokens: torch.Tensor  # [1 or B, n, width], from module.condition_tokens(features)
    weight: Union[float, torch.Tensor]


def _batched(branch: Branch, rows: int) -> torch.Tensor:
    tokens = branch.tokens
    if tokens.shape[0] == rows:
        return tokens
    if tokens.shape[0] == 1:
        return tokens.expand(rows, -1, -1)
    raise ValueError(f"EMMA {branch.module.config.modality} features have {tokens.shape[0]} rows but the ELLA "
                     f"latents have {rows}: give one image (used for every row) or one per row")


def _scale(branch: Branch, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """lambda of a branch: a 0-d tensor, or [rows, 1, 1] for per-row weights."""
    gate_scale = branch.module.config.gate_scale
    if not torch.is_tensor(branch.weight):
        # a tensor of the compute dtype, not a Python float: torch multiplies a float scalar in double and
        # then rounds, a tensor in the compute dtype; per-row weights (below) must round the same way
        return torch.tensor(gate_scale * float(branch.weight), dtype=dtype, device=branch.tokens.device)
    weight = branch.weight.reshape(-1)
    if weight.shape[0] not in (1, rows):
        raise ValueError(f"EMMA {branch.module.config.modality} branch has {weight.shape[0]} weights for "
                         f"{rows} rows")
    # lambda in float64, then the compute dtype: the same number a scalar weight gives (Python floats are
    # float64), so per-row weights reproduce a scalar-weight call bit for bit
    return (gate_scale * weight.double()).to(dtype).view(-1, 1, 1).to(branch.tokens.device)


def _skipped(branch: Branch) -> bool:
    return not torch.is_tensor(branch.weight) and branch.weight * branch.module.config.gate_scale == 0.0


def assembled_after_block(branches: Sequence[Branch]) -> AfterBlock:
    """ELLA's `after_block` hook that adds every branch's summed gated residuals after each PR block.

    Branches with a scalar lambda of 0 (weight 0 or gate scale 0) are skipped entirely, not multiplied by 0,
    so they cannot add floating-point noise; with no branch left the hook returns ELLA's latents untouched.
    """
    branches = [b for b in branches if not _skipped(b)]

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
            active.append((blocks[index], _scale(branch, rows, dtype), _batched(branch, rows).to(dtype), dtype))

        attn = sum(block.attention_residual(latents.to(dtype), tokens, time_embedding.to(dtype), scale)
                   .to(latents.dtype) for block, scale, tokens, dtype in active)
        latents = latents + attn
        ffn = sum(block.ffn_residual(latents.to(dtype), time_embedding.to(dtype), scale).to(latents.dtype)
                  for block, scale, tokens, dtype in active)
        return latents + ffn

    return after_block
