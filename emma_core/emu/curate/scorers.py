"""Scores for the optional curation filters, from the user's own models (duck-typed: no ComfyUI import).

    clip_vision  .encode_image(IMAGE [1, H, W, 3] in [0, 1]) -> an output whose ["image_embeds"] is the projected
                 image embedding (ComfyUI's ClipVisionModel; its Output supports [] and nothing else)
    clip         .tokenize(text), .encode_from_tokens(tokens, return_pooled=True) (ComfyUI's CLIP)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .filters import AestheticScorer, ClipScorer


def image_embeds(clip_vision, image) -> torch.Tensor:
    """The L2-normalised CLIP embedding [1, D] of a PIL RGB image."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    return F.normalize(clip_vision.encode_image(pixels)["image_embeds"].float(), dim=-1)


def clip_scorer(clip_vision, clip) -> ClipScorer:
    """cos(image embedding, caption embedding): the two encoders must share one embedding space (CLIP ViT-L/14
    vision with the full clip_l text encoder from Load CLIP; SD1.5 checkpoints lack its text projection)."""
    def score(image, caption: str) -> float:
        embeds = image_embeds(clip_vision, image)
        _cond, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
        if pooled.shape[-1] != embeds.shape[-1]:
            raise ValueError(f"the CLIP text encoder gives {pooled.shape[-1]}-d embeddings but the CLIP vision "
                             f"model {embeds.shape[-1]}-d: connect a pair that shares one embedding space (CLIP "
                             "ViT-L/14 vision with the full clip_l text encoder from Load CLIP), or set clip_min "
                             "to 0")
        text = F.normalize(pooled.float().to(embeds.device), dim=-1)
        return float((embeds * text).sum())
    return score


def aesthetic_scorer(clip_vision, predictor_state_dict: dict) -> AestheticScorer:
    head = aesthetic_head(predictor_state_dict)

    def score(image) -> float:
        embeds = image_embeds(clip_vision, image).cpu()
        if embeds.shape[-1] != head[0].in_features:
            raise ValueError(f"the aesthetic predictor takes {head[0].in_features}-d CLIP image embeddings but the "
                             f"CLIP vision model gives {embeds.shape[-1]}-d (the LAION predictor needs CLIP ViT-L/14)")
        with torch.no_grad():
            return float(head(embeds)[0, 0])
    return score


def aesthetic_head(state_dict: dict):
    """The LAION aesthetic predictor head (improved-aesthetic-predictor: Linear 768-1024-128-64-16-1 with
    dropouts and NO activations in between) from its state dict, keys "layers.<i>.weight/bias" (or any prefix).
    Input: L2-normalised CLIP ViT-L/14 image embeddings; output: a score on a 1-10 scale."""
    weights = sorted((k for k in state_dict if k.endswith(".weight") and state_dict[k].ndim == 2),
                     key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
    if not weights:
        raise ValueError("not an aesthetic predictor: no linear layers in the file")
    layers = []
    for k in weights:
        w = state_dict[k].float()
        lin = nn.Linear(w.shape[1], w.shape[0], bias=k[:-7] + ".bias" in state_dict)
        with torch.no_grad():
            lin.weight.copy_(w)
            if lin.bias is not None:
                lin.bias.copy_(state_dict[k[:-7] + ".bias"].float())
        layers.append(lin)
    for a, b in zip(layers, layers[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"not a stack of linear layers: {a.out_features} outputs feed {b.in_features} inputs")
    if layers[-1].out_features != 1:
        raise ValueError(f"the last layer gives {layers[-1].out_features} values, not one score")
    return nn.Sequential(*layers).eval()
