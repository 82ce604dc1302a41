"""UMM-Diffusion: a subject image as a pseudo-word in the CLIP text space, and the mixed guidance.

h_y is the text encoder's output for the caption; h_u is h_y with only the subject word's token
positions replaced by the projected image embedding. Sampling blends the two predictions with w, then
applies classifier-free guidance s:

    eps = eps(empty) + s * [(1 - w) * (eps(h_y) - eps(empty)) + w * (eps(h_u) - eps(empty))]

The weights of the three predictions sum to 1, so the same blend holds for x0 (denoised) predictions. It is
ComfyUI's dual CFG, eps(empty) + cfg2 (eps(c2) - eps(empty)) + cfg1 (eps(c1) - eps(c2)), with c1 = h_u,
c2 = h_y, cfg1 = s w and cfg2 = s: the UMM Guider node returns ComfyUI's own guider so configured.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from .atomic import save_safetensors_atomic
from .state_dict import WeightsFileError, check_state_dict, expected_shapes, read_safetensors

FORMAT = "umm-projector"
VERSION = 1


@dataclass(frozen=True)
class ProjectorConfig:
    image_dim: int = 1024  # CLIP ViT-H/14 image_embeds
    text_dim: int = 768  # SD1.5's CLIP-L hidden states
    hidden_dim: int = 1024
    image_encoder: str = "clip-vit-h-14"
    text_encoder: str = "sd15-clip-l"


class UMMProjector(nn.Module):
    """Image embedding -> one pseudo-word vector in the text encoder's output space."""

    def __init__(self, config: ProjectorConfig = ProjectorConfig()):
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(nn.Linear(config.image_dim, config.hidden_dim), nn.GELU(),
                                 nn.Linear(config.hidden_dim, config.text_dim))
        self.norm = nn.LayerNorm(config.text_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        if image_embeds.shape[-1] != self.config.image_dim:
            raise ValueError(f"the projector was trained on {self.config.image_encoder} embeddings of width "
                             f"{self.config.image_dim}; got width {image_embeds.shape[-1]}: use the matching CLIP "
                             "vision model")
        return self.norm(self.mlp(image_embeds))


def find_subject(tokens: Sequence[int], subject: Sequence[int], word: str = "") -> list[int]:
    """Positions of every occurrence of the subject word's tokens in the prompt's tokens."""
    if not subject:
        raise ValueError("the subject word is empty: name the word in the prompt that the image replaces")
    n = len(subject)
    positions = [i + k for i in range(len(tokens) - n + 1) if list(tokens[i:i + n]) == list(subject)
                 for k in range(n)]
    if not positions:
        raise ValueError(f"the subject word {word!r} does not occur in the prompt; write it in the prompt "
                         "(e.g. 'a photo of a dog on the beach' with subject word 'dog')")
    return positions


def _ids(chunks) -> list[int]:
    return [token[0] if isinstance(token, (tuple, list)) else token for chunk in chunks for token in chunk]


def clip_tokens(clip, text: str) -> tuple[dict, str]:
    """ComfyUI's CLIP (duck-typed: .tokenize(text) -> {encoder key: chunks of (token, weight)}): the text's
    tokens and the one encoder's key; ValueError when the CLIP has several text encoders (not SD1.5)."""
    tokens = clip.tokenize(text)
    if len(tokens) != 1:
        raise ValueError(f"UMM needs an SD1.5 CLIP (one text encoder); got {', '.join(tokens)}")
    return tokens, next(iter(tokens))


def subject_tokens(clip, text: str, subject_word: str) -> tuple[dict, list[int]]:
    """The prompt's tokens and the positions of the subject word's tokens in them (the word tokenized alone,
    without CLIP's start / end / pad tokens): what UMM Subject Encode and the projector trainer both use."""
    tokens, key = clip_tokens(clip, text)
    word = clip.tokenize(subject_word.strip())[key][0]
    inner = getattr(getattr(clip, "tokenizer", None), f"clip_{key}", None)
    specials = {getattr(inner, name, None) for name in ("start_token", "end_token", "pad_token")} - {None}
    subject = [t for t in _ids([word]) if t not in specials]
    return tokens, find_subject(_ids(tokens[key]), subject, subject_word.strip())


def text_states(clip, tokens: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """h_y [1, T, D] and the pooled output of the prompt's tokens (ComfyUI's CLIP.encode_from_tokens)."""
    return clip.encode_from_tokens(tokens, return_pooled=True)


def subject_embeds(clip_vision_output) -> torch.Tensor:
    """CLIP Vision's output (CLIP Vision Encode, ClipVisionModel.encode_image) -> the projector's input: the first
    image's `image_embeds`, [1, image_dim] float32 on the CPU."""
    return clip_vision_output["image_embeds"][:1].float().cpu()


def replace_positions(h_y: torch.Tensor, positions: Sequence[int], pseudo_word: torch.Tensor) -> torch.Tensor:
    """h_u: a copy of h_y [B, T, D] with `positions` set to the pseudo word [B or 1, D]."""
    h_u = h_y.clone()
    h_u[:, list(positions)] = pseudo_word.to(h_y.dtype).reshape(-1, 1, h_y.shape[-1]).expand(
        h_y.shape[0], len(positions), -1)
    return h_u


def save_projector(projector: UMMProjector, path: str, training_steps: int = 0) -> None:
    metadata = {"format": FORMAT, "format_version": str(VERSION), "config": json.dumps(asdict(projector.config)),
                "training_steps": str(training_steps)}
    save_safetensors_atomic(path, projector.state_dict(), metadata)


def load_projector(path: str, dtype: torch.dtype = torch.float32) -> UMMProjector:
    tensors, metadata = read_safetensors(path)
    name = os.path.basename(path)
    if metadata.get("format") != FORMAT:
        raise WeightsFileError(f"{name} is not a UMM projector (format {metadata.get('format')!r}); "
                               "expected a file written by the UMM projector trainer")
    if int(metadata.get("format_version", "0")) > VERSION:
        raise WeightsFileError(f"{name}: UMM projector format {metadata['format_version']} is newer than this pack")
    config = ProjectorConfig(**json.loads(metadata["config"]))
    projector = UMMProjector(config)
    check_state_dict(tensors, expected_shapes(projector), "UMM projector", path)
    projector.load_state_dict(tensors)
    return projector.to(dtype).eval().requires_grad_(False)
