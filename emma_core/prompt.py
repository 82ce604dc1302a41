"""What an ELLA prompt carries through the graph, and its cross-attention contexts over a run of timesteps.

One function computes contexts: `run_contexts`, for several prompts over a run of S timesteps in one connector
call. A single model call is a run of one timestep (`ELLAPrompt.context`), so the context a sampling run
precomputes for a sigma and the one a call made at that sigma alone computes come from the same code. They
differ only by float rounding: a BLAS rounds a row differently with the shape of the product it is in (how
many timesteps and prompts share the call). The contract, held by the tests for every sampler and scheduler:

    |precomputed - alone| <= CONTEXT_RTOL * max|alone|   at every model call (fp32, CPU)

and a repeated computation (same inputs, same shapes) is bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .assemble import Branch, ConditionInput, assembled_after_block
from .ella import ELLA, Group

CONTEXT_RTOL = 5e-6
"""Relative bound (to the largest |value| of the context) between a context computed within a whole run and
the same context computed for its timestep alone, in fp32."""


@dataclass
class ELLAPrompt:
    """T5 features on their true length (never padded: the connector has no attention mask)."""

    text_features: torch.Tensor  # [N, 2048] float32, CPU
    clip_tokens: Optional[torch.Tensor] = None  # [77k, 768]: appended after the connector's tokens
    conditions: list[ConditionInput] = field(default_factory=list)  # EMMA modules assembled into the connector
    # condition tokens do not depend on the timestep: computed once per (condition, device, dtype)
    _tokens: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def length(self) -> int:
        return self.text_features.shape[0]

    def with_conditions(self, conditions: Sequence[ConditionInput]) -> "ELLAPrompt":
        return ELLAPrompt(self.text_features, self.clip_tokens, [*self.conditions, *conditions])

    def condition_tokens(self, condition: ConditionInput) -> torch.Tensor:
        """[1 or R, n, width]: the condition's tokens, on its module's device and in its dtype (cached)."""
        param = next(condition.module.parameters())
        key = (condition, param.device, param.dtype)  # the condition itself: held here, so never reused
        if key not in self._tokens:
            features = condition.features
            moved = type(features)(features.kind, {k: v.to(param.device, param.dtype)
                                                   for k, v in features.tensors.items()})
            self._tokens[key] = condition.module.condition_tokens(moved)
        return self._tokens[key]

    def context(
        self,
        connector: ELLA,
        timesteps: torch.Tensor,
        weight_at: Optional[Callable[[ConditionInput], float]] = None,
    ) -> torch.Tensor:
        """The context of one model call: `run_contexts` for a run of its timestep.

        timesteps: the call's, one per row (usually all equal). weight_at(condition): a condition's weight at
        this call (0 outside its start/end range); by default its own weight.
        Returns [R, T, w] (R: 1, or the rows of the conditions' features) when all rows share the timestep,
        else [B, T, w], row b at timestep b (with reference b when the features have one per row).
        """
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        if bool((timesteps == timesteps[0]).all()):
            timesteps = timesteps[:1]
        weight_at = weight_at or (lambda condition: condition.weight)
        steps = timesteps.shape[0]
        weights = tuple(torch.full((steps,), float(weight_at(c)), dtype=torch.float64) for c in self.conditions)
        per_step = run_contexts([PromptRun(self, weights)], connector, timesteps)[0]  # [S, R, T, w]
        if steps == 1:
            return per_step[0]
        if per_step.shape[1] == 1:
            return per_step[:, 0]
        if per_step.shape[1] != steps:
            raise ValueError(f"EMMA features have {per_step.shape[1]} rows but the model call has {steps} "
                             "timesteps: give one image (used for every row) or one per row")
        index = torch.arange(steps, device=per_step.device)
        return per_step[index, index]


@dataclass(frozen=True)
class PromptRun:
    """A prompt over a run of S timesteps: `weights[i]` ([S] float64) is the weight of prompt.conditions[i]
    at each of them, 0 where it is off."""

    prompt: ELLAPrompt
    weights: tuple[torch.Tensor, ...]


def run_contexts(runs: Sequence[PromptRun], connector: ELLA, timesteps: torch.Tensor) -> list[torch.Tensor]:
    """The context of every prompt at each of S timesteps, in ONE connector call: per run [S, R, T, w], R = 1
    or the rows of its conditions' features (one reference per row).

    The prompts are groups of the call (ella.Group: each attends only to its own text, no padding); a
    condition off at some timesteps runs there with lambda 0 (it adds an exact 0), one off at all of them
    is left out. See the module docstring for how this compares with a run of one timestep.
    """
    if not runs:
        return []
    param = next(connector.parameters())
    timesteps = torch.as_tensor(timesteps).reshape(-1).to(param.device, torch.float32)
    steps = timesteps.shape[0]
    groups, group_timesteps, rows_per_step = [], [], []
    for run in runs:
        prompt = run.prompt
        if len(run.weights) != len(prompt.conditions):
            raise ValueError(f"{len(run.weights)} weight schedules for {len(prompt.conditions)} conditions")
        active = [(c, w.reshape(-1).double()) for c, w in zip(prompt.conditions, run.weights) if bool((w != 0).any())]
        tokens = [prompt.condition_tokens(c) for c, _ in active]
        rows = max([1, *(t.shape[0] for t in tokens)])
        branches = [Branch(c.module, t if t.shape[0] == 1 else t.repeat(steps, 1, 1), w.repeat_interleave(rows))
                    for (c, w), t in zip(active, tokens)]
        text = prompt.text_features.to(param.device, param.dtype).unsqueeze(0)
        groups.append(Group(text, steps * rows, assembled_after_block(branches) if branches else None))
        group_timesteps.append(timesteps.repeat_interleave(rows))
        rows_per_step.append(rows)
    tokens = connector.forward_groups(groups, torch.cat(group_timesteps))
    results, start = [], 0
    for run, group, rows in zip(runs, groups, rows_per_step):
        part = tokens[start:start + group.rows]
        start += group.rows
        if run.prompt.clip_tokens is not None:
            clip = run.prompt.clip_tokens.to(part.device, part.dtype).unsqueeze(0).expand(part.shape[0], -1, -1)
            part = torch.cat([part, clip], dim=1)
        results.append(part.reshape(steps, rows, *part.shape[1:]))
    return results
