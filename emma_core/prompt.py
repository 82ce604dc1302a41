"""What an ELLA prompt carries through the graph, and its cross-attention context at a timestep."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .assemble import Branch, ConditionInput, assembled_after_block
from .ella import ELLA


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
        """[1, T, 768] when every row shares one timestep and one set of features, else [B, T, 768].

        weight_at(condition) gives a condition's weight at this call (0 outside its start/end range);
        by default its own weight.
        """
        param = next(connector.parameters())
        timesteps = timesteps.reshape(-1).to(param.device, torch.float32)
        if bool((timesteps == timesteps[0]).all()):
            timesteps = timesteps[:1]
        text = self.text_features.to(param.device, param.dtype).unsqueeze(0)
        weight_at = weight_at or (lambda condition: condition.weight)
        branches = [self._branch(c, w) for c in self.conditions if (w := weight_at(c)) != 0.0]
        after_block = assembled_after_block(branches) if branches else None
        tokens = connector(text, timesteps, after_block=after_block)
        if self.clip_tokens is not None:
            clip = self.clip_tokens.to(tokens.device, tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens, clip], dim=1)
        return tokens
