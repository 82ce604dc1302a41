"""CLIP vision outputs as EMMA features: patch tokens + global embedding (object, portrait) or the
global embedding alone (style), and an object mask turned into per-patch weights.

    image_features(clip_vision, IMAGE, kind, mask)   what the Image Features node and the trainer both call
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .adapters import Features

log = logging.getLogger(__name__)


def encoder_name(clip_vision_file: str) -> str:
    """What made CLIP features, as features and EMMA module files record it ("" when the file is not known)."""
    return f"CLIP vision {clip_vision_file}" if clip_vision_file else ""


def patch_weights(mask: torch.Tensor, patches: int, image_size: int, crop: bool) -> torch.Tensor:
    """MASK [B, H, W] (1 = object) -> [B, patches] in the patch grid CLIP saw, after the same resize and
    centre crop as the image, so a weight lines up with the patch token it scales."""
    grid = math.isqrt(patches)
    if grid * grid != patches:
        raise ValueError(f"CLIP patch count {patches} is not a square grid")
    mask = mask.float()
    if mask.ndim == 2:
        mask = mask[None]
    mask = mask[:, None]
    height, width = mask.shape[-2:]
    if crop:
        scale = image_size / min(height, width)
        mask = F.interpolate(mask, size=(round(height * scale), round(width * scale)), mode="bilinear",
                             align_corners=False)
        top = (mask.shape[-2] - image_size) // 2
        left = (mask.shape[-1] - image_size) // 2
        mask = mask[..., top:top + image_size, left:left + image_size]
    else:
        mask = F.interpolate(mask, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(mask, grid).flatten(1).clamp(0, 1)


def clip_features(
    penultimate_hidden_states: Optional[torch.Tensor],
    image_embeds: torch.Tensor,
    kind: str,
    mask: Optional[torch.Tensor] = None,
    image_size: int = 224,
    crop: bool = True,
    encoder: str = "",
) -> Features:
    embeds = image_embeds.detach().float().cpu()
    if kind == "style":
        if mask is not None:
            raise ValueError("style features use the global embedding only: a mask has no effect; remove it")
        return Features("style", {"embeds": embeds}, encoder)
    hidden = penultimate_hidden_states.detach().float().cpu()
    tensors = {"hidden": hidden, "embeds": embeds}
    if mask is not None and float(mask.max()) == 0.0:
        # LoadImage gives an all-zero MASK for images without alpha: that means "nothing painted", so
        # the object is the whole image rather than nothing at all.
        log.info("EMMA: the object mask is empty; using the whole image")
        mask = None
    if mask is not None:
        weights = patch_weights(mask.cpu(), hidden.shape[1] - 1, image_size, crop)
        if weights.shape[0] not in (1, hidden.shape[0]):
            raise ValueError(f"the mask has {weights.shape[0]} frames but there are {hidden.shape[0]} images")
        tensors["mask"] = weights.expand(hidden.shape[0], -1).contiguous()
    return Features("clip_tokens", tensors, encoder)


def image_features(clip_vision, image: torch.Tensor, kind: str, mask: Optional[torch.Tensor] = None,
                   crop: bool = True, encoder: str = "") -> Features:
    """IMAGE [B, H, W, 3] through a CLIP vision model -> EMMA features of `kind` ("clip_tokens" or "style"):
    the one path the Image Features node and the trainer's cache share. `clip_vision` is duck-typed (ComfyUI's
    ClipVisionModel): .encode_image(IMAGE, crop=...) -> {"penultimate_hidden_states", "image_embeds"}, and
    .image_size (224 when absent)."""
    output = clip_vision.encode_image(image, crop=crop)
    hidden = output["penultimate_hidden_states"] if kind != "style" else None  # style reads the embedding alone
    return clip_features(hidden, output["image_embeds"], kind, mask,
                         image_size=getattr(clip_vision, "image_size", 224), crop=crop, encoder=encoder)
