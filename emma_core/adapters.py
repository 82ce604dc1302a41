"""Condition feature adapters: an encoder's output -> condition tokens [B, n, 768] for the AGPR branch.

Each adapter is trained with its EMMA module and declares the feature kind and input dims it expects, so
feeding it another encoder's output is a clear error rather than a silent shape accident.

Feature kinds (docs/emma-design.md):
  face         {"embedding": [B, 512]}                        insightface ArcFace normed embedding
  clip_tokens  {"hidden": [B, 257, 1280], "embeds": [B, 1024]} CLIP ViT-H/14 penultimate hidden states and
               optional "mask": [B, 256]                       image_embeds; mask = per-patch weights
  style        {"embeds": [B, 1024]}                           CLIP ViT-H/14 image_embeds
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

FEATURE_KINDS = ("face", "clip_tokens", "style")

# Default input dims per kind (batch axis left out). A module file stores the dims it was trained on.
DEFAULT_DIMS: dict[str, dict[str, tuple[int, ...]]] = {
    "face": {"embedding": (512,)},
    "clip_tokens": {"hidden": (257, 1280), "embeds": (1024,)},
    "style": {"embeds": (1024,)},
}


@dataclass
class Features:
    """One condition's encoder output, batch first. `kind` is one of FEATURE_KINDS."""

    kind: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    encoder: str = ""  # what made them, e.g. "InsightFace antelopev2 ArcFace" ("" = not known)

    @property
    def batch(self) -> int:
        return next(iter(self.tensors.values())).shape[0] if self.tensors else 0

    def describe(self) -> str:
        shapes = ", ".join(f"{name} {list(t.shape)}" for name, t in self.tensors.items())
        return f"{self.kind!r} features ({shapes})"


def describe_dims(kind: str, dims: Mapping[str, tuple[int, ...]]) -> str:
    shapes = ", ".join(f"{name} [B, {', '.join(map(str, shape))}]" for name, shape in dims.items())
    return f"{kind!r} features ({shapes})"


class FeatureAdapter(nn.Module):
    kind: str = ""

    def __init__(self, dims: Mapping[str, tuple[int, ...]], width: int):
        super().__init__()
        self.dims = {name: tuple(shape) for name, shape in dims.items()}
        self.width = width

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    def optional_dims(self) -> dict[str, tuple[int, ...]]:
        return {}

    def check(self, features: Features) -> None:
        """ValueError naming the expected and the found kind and dims."""
        expected = describe_dims(self.kind, self.dims)
        if not isinstance(features, Features):
            raise ValueError(f"this EMMA module expects {expected}; got {type(features).__name__}")
        found = features.describe()
        if features.kind != self.kind:
            raise ValueError(f"this EMMA module expects {expected}; got {found}. "
                             "Use the encoder this module was trained with.")
        allowed = {**self.dims, **self.optional_dims()}
        problems = [f"missing {name!r}" for name in self.dims if name not in features.tensors]
        problems += [f"unexpected {name!r}" for name in features.tensors if name not in allowed]
        for name, tensor in features.tensors.items():
            if name in allowed and tuple(tensor.shape[1:]) != allowed[name]:
                problems.append(f"{name!r} is {list(tensor.shape)}, expected [B, {', '.join(map(str, allowed[name]))}]")
        if not problems and len({t.shape[0] for t in features.tensors.values()}) > 1:
            problems.append("the tensors have different batch sizes")
        if problems:
            raise ValueError(f"this EMMA module expects {expected}; got {found}: {'; '.join(problems)}")

    def _inputs(self, features: Features) -> dict[str, torch.Tensor]:
        self.check(features)
        param = next(self.parameters())
        return {name: t.to(param.device, param.dtype) for name, t in features.tensors.items()}


class VectorTokensAdapter(FeatureAdapter):
    """One global vector -> `tokens` tokens through a linear projection and a LayerNorm (IP-Adapter's
    projection form). Subclasses name the vector and may prepare it."""

    vector: str = ""

    def __init__(self, dims: Mapping[str, tuple[int, ...]], width: int = 768, tokens: int = 4):
        super().__init__(dims, width)
        self.tokens = tokens
        self.proj = nn.Linear(self.dims[self.vector][0], width * tokens)
        self.norm = nn.LayerNorm(width)

    @property
    def num_tokens(self) -> int:
        return self.tokens

    def prepare(self, vector: torch.Tensor) -> torch.Tensor:
        return vector

    def forward(self, features: Features) -> torch.Tensor:
        vector = self.prepare(self._inputs(features)[self.vector])
        return self.norm(rearrange(self.proj(vector), "b (n d) -> b n d", n=self.tokens))


class FaceAdapter(VectorTokensAdapter):
    """ArcFace 512-d identity embedding -> `tokens` tokens, LayerNorm (IP-Adapter FaceID's projection form)."""

    kind = "face"
    vector = "embedding"

    def prepare(self, vector: torch.Tensor) -> torch.Tensor:
        # ArcFace identity lives in the direction only; re-normalising makes insightface's raw `embedding`
        # (norm ~20) and its `normed_embedding` give the same tokens.
        return F.normalize(vector, dim=-1)


class CLIPTokensAdapter(FeatureAdapter):
    """CLIP vision penultimate hidden states (CLS + patches) and image_embeds -> one token each, 258 in all.

    Object-centric mask: optional per-patch weights [B, patches] (a MASK downsampled to the 16x16 patch
    grid). The projected patch tokens are MULTIPLIED by it; none are removed and nothing is appended:
      - the token count stays fixed, so masked and unmasked conditions batch and assemble alike;
      - soft (feathered) masks act as weights instead of being thresholded;
      - a fully masked token becomes zero, which the branch's AdaLN maps to one constant key/value (its
        time-dependent shift): a "nothing here" token the module learns, since it is trained with masks.
    The CLS token and the global embedding are not masked.
    """

    kind = "clip_tokens"

    def __init__(self, dims: Mapping[str, tuple[int, ...]], width: int = 768):
        super().__init__(dims, width)
        hidden_tokens, hidden_width = self.dims["hidden"]
        self.patches = hidden_tokens - 1  # the first hidden token is CLS
        self.proj_hidden = nn.Linear(hidden_width, width)
        self.proj_embeds = nn.Linear(self.dims["embeds"][0], width)

    @property
    def num_tokens(self) -> int:
        return self.dims["hidden"][0] + 1

    def optional_dims(self) -> dict[str, tuple[int, ...]]:
        return {"mask": (self.patches,)}

    def forward(self, features: Features) -> torch.Tensor:
        inputs = self._inputs(features)
        hidden = self.proj_hidden(inputs["hidden"])
        if "mask" in inputs:
            keep = torch.cat([torch.ones_like(inputs["mask"][:, :1]), inputs["mask"]], dim=1)  # CLS kept
            hidden = hidden * rearrange(keep, "b n -> b n 1")
        global_token = rearrange(self.proj_embeds(inputs["embeds"]), "b d -> b 1 d")
        return torch.cat([hidden, global_token], dim=1)


class StyleAdapter(VectorTokensAdapter):
    """CLIP image_embeds only -> `tokens` tokens, LayerNorm: the global embedding carries style, and leaving
    the patch tokens out keeps the reference image's content from leaking in (the paper's choice)."""

    kind = "style"
    vector = "embeds"


ADAPTERS: dict[str, type[FeatureAdapter]] = {
    "face": FaceAdapter, "clip_tokens": CLIPTokensAdapter, "style": StyleAdapter,
}


def make_adapter(kind: str, dims: Mapping[str, tuple[int, ...]], width: int, num_tokens: int) -> FeatureAdapter:
    """The adapter for `kind`; raises ValueError when dims or the token count do not fit that kind."""
    if kind not in ADAPTERS:
        raise ValueError(f"unknown feature kind {kind!r}; known kinds: {', '.join(FEATURE_KINDS)}")
    expected_names = set(DEFAULT_DIMS[kind])
    if set(dims) != expected_names or any(len(dims[n]) != len(DEFAULT_DIMS[kind][n]) for n in dims):
        raise ValueError(f"{kind!r} features need dims for {sorted(expected_names)} shaped like "
                         f"{DEFAULT_DIMS[kind]}; got {dict(dims)}")
    if kind == "clip_tokens":
        adapter = CLIPTokensAdapter(dims, width)
    else:
        adapter = ADAPTERS[kind](dims, width, num_tokens)
    if adapter.num_tokens != num_tokens:
        raise ValueError(f"{kind!r} features give {adapter.num_tokens} condition tokens "
                         f"(hidden tokens + 1 global token), not {num_tokens}")
    return adapter
