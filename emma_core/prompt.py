"""What an ELLA prompt carries through the graph, and its cross-attention context at a timestep."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .assemble import Branch, ConditionInput, assembled_after_block
from .ella import ELLA, Group


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

    def with_conditions(self, conditions: list[ConditionInput]) -> "ELLAPrompt":
        return ELLAPrompt(self.text_features, self.clip_tokens, [*self.conditions, *conditions])

    def _branch(self, condition: ConditionInput, weight: float) -> Branch:
        param = next(condition.module.parameters())
        key = (id(condition), param.device, param.dtype)
        if key not in self._tokens:
            features = condition.features
            moved = type(features)(features.kind, {k: v.to(param.device, param.dtype)
                                                   for k, v in features.tensors.items()})
            self._tokens[key] = condition.module.condition_tokens(moved)
        return Branch(condition.module, self._tokens[key], weight)

    def context(
        self,
        connector: ELLA,
        timesteps: torch.Tensor,
        weight_at: Optional[Callable[[ConditionInput], float]] = None,
    ) -> torch.Tensor:
        """[1, T, 768] when every row shares one timestep and one set of features, else [B, T, 768] (B: the
        rows of the timesteps, or of a condition's features when they give one reference per row).

        weight_at(condition) gives a condition's weight at this call (0 outside its start/end range);
        by default its own weight.
        """
        param = next(connector.parameters())
        timesteps = timesteps.reshape(-1).to(param.device, torch.float32)
        if bool((timesteps == timesteps[0]).all()):
            timesteps = timesteps[:1]
        weight_at = weight_at or (lambda condition: condition.weight)
        branches = [self._branch(c, w) for c in self.conditions if (w := weight_at(c)) != 0.0]
        rows = max([timesteps.shape[0], *(b.tokens.shape[0] for b in branches)])
        text = self.text_features.to(param.device, param.dtype).unsqueeze(0)
        after_block = assembled_after_block(branches) if branches else None
        tokens = connector(text, timesteps, after_block=after_block, rows=rows)
        if self.clip_tokens is not None:
            clip = self.clip_tokens.to(tokens.device, tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens, clip], dim=1)
        return tokens


def schedule_contexts(
    prompts: Sequence[ELLAPrompt],
    connector: ELLA,
    timesteps: torch.Tensor,
    weights_at: Callable[[ELLAPrompt, ConditionInput], torch.Tensor],
    max_rows: Optional[int] = None,
) -> list[torch.Tensor]:
    """The context of every prompt at each of S timesteps, in ONE connector call (or one per `max_rows`
    rows): per prompt [S, R, T, w], R = 1, or the rows of its conditions' features (one reference per row).

    weights_at(prompt, condition) -> [S] float64: the condition's weight at each timestep (0 where inactive).
    Row (s, r) of a prompt is computed exactly as `ELLAPrompt.context` computes row r at timestep s alone: the
    prompts run as groups of one call (ella.Group: each attends only to its own text, no padding), the text is
    projected once, the time-dependent linears are row-invariant (ella.row_invariant_linear), and an inactive
    condition adds an exact 0. The tests hold the two equal with torch.equal.
    """
    param = next(connector.parameters())
    timesteps = timesteps.reshape(-1).to(param.device, torch.float32)
    steps = timesteps.shape[0]
    plans = []  # per prompt: its active conditions' branches, their per-step weights, its rows
    for prompt in prompts:
        weights = {id(c): weights_at(prompt, c).reshape(-1).double() for c in prompt.conditions}
        active = [c for c in prompt.conditions if bool((weights[id(c)] != 0).any())]
        branches = [prompt._branch(c, 1.0) for c in active]
        rows = max([1, *(b.tokens.shape[0] for b in branches)])
        plans.append((prompt, active, branches, weights, rows))
    per_step_rows = sum(plan[4] for plan in plans)
    chunk = max(1, (max_rows or steps * per_step_rows) // per_step_rows)  # whole timesteps per call
    outputs: list[list[torch.Tensor]] = [[] for _ in prompts]
    for first in range(0, steps, chunk):
        last = min(first + chunk, steps)
        count = last - first
        groups, group_timesteps = [], []
        for prompt, active, branches, weights, rows in plans:
            chunk_branches = [
                Branch(b.module, b.tokens.repeat(count, 1, 1) if b.tokens.shape[0] == rows else b.tokens,
                       weights[id(c)][first:last].repeat_interleave(rows))
                for c, b in zip(active, branches)]
            text = prompt.text_features.to(param.device, param.dtype).unsqueeze(0)
            groups.append(Group(text, count * rows, assembled_after_block(chunk_branches) if chunk_branches else None))
            group_timesteps.append(timesteps[first:last].repeat_interleave(rows))
        tokens = connector.forward_groups(groups, torch.cat(group_timesteps))
        start = 0
        for i, group in enumerate(groups):
            outputs[i].append(tokens[start:start + group.rows])
            start += group.rows
    results = []
    for (prompt, _, _, _, rows), parts in zip(plans, outputs):
        tokens = torch.cat(parts)
        if prompt.clip_tokens is not None:
            clip = prompt.clip_tokens.to(tokens.device, tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens, clip], dim=1)
        results.append(tokens.reshape(steps, rows, *tokens.shape[1:]))
    return results
