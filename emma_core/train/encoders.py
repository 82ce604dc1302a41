"""CacheEncoders built from the frozen models the front ends hold (duck-typed: no ComfyUI import here).

    vae            object with .encode(IMAGE [B, H, W, 3]) -> raw latents (ComfyUI's comfy.sd.VAE)
    base_model     object with .process_latent_in(latents) (ComfyUI's BaseModel: SD1.5 scale 0.18215)
    t5             object with .encode(text, fixed_length) -> [N, 2048] (emma_core.t5.T5TextEncoder, or the
                   node pack's T5 handle)
    clip_vision    object with .encode_image(IMAGE, crop=...) -> {"penultimate_hidden_states", "image_embeds"}
                   and .image_size (ComfyUI's ClipVisionModel); object / portrait / style modules
    face_analyzer  emma_core.face.FaceAnalyzer; face modules
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional

import torch

from ..adapters import Features
from ..clip_features import image_features
from ..emma_module import FIXED_TEXT_LENGTH, MODALITY_KINDS, TEXT_LENGTHS
from .cache import CacheEncoders

__all__ = ["TEXT_LENGTHS", "clip_condition", "comfy_encoders", "face_condition", "module_fingerprint"]


def module_fingerprint(module) -> str:
    """A cheap identity of a model's weights: names, shapes and a sample of values of a few tensors."""
    if module is None:
        return ""
    if hasattr(module, "state_dict"):
        sd = module.state_dict()
    else:
        return type(module).__name__
    h = hashlib.sha256()
    keys = list(sd)
    for i, key in enumerate(keys):
        t = sd[key]
        h.update(f"{key}:{tuple(t.shape)};".encode())
        if i < 3 or i >= len(keys) - 3:
            h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def face_condition(analyzer):
    """The cache's face encoder: emma_core.face.face_features (as the Face Features node) on the image."""
    from ..face.features import face_features, face_frames

    def encode(image: torch.Tensor, mask=None) -> Features:
        return face_features(face_frames(image[:1]), analyzer)[0]  # FaceError (a ValueError) -> skipped

    return encode


def clip_condition(clip_vision, kind: str, crop: bool = True):
    """The cache's CLIP encoder: emma_core.clip_features.image_features (as the Image Features node)."""
    def encode(image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Features:
        return image_features(clip_vision, image, kind, mask if kind == "clip_tokens" else None, crop=crop)

    return encode


def comfy_encoders(*, modality: str, vae, base_model, t5, resolution: int, text_length: str = TEXT_LENGTHS[0],
                   clip_vision=None, face_analyzer=None, names: Optional[dict] = None, buckets: bool = False,
                   reference_views: int = 0) -> CacheEncoders:
    """The cache's encoders from the front end's frozen models; `buckets` and `reference_views` as
    cache.CacheEncoders (no reference views for faces: the embedding of a cropped or flipped face is the same
    person's)."""
    kind = MODALITY_KINDS.get(modality)
    if kind is None:
        raise ValueError(f"training supports the modalities {sorted(MODALITY_KINDS)}, not {modality!r}")
    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 (the VAE's cell), got {resolution}")
    if text_length not in TEXT_LENGTHS:
        raise ValueError(f"text_length is one of {TEXT_LENGTHS}, not {text_length!r}")
    fixed = FIXED_TEXT_LENGTH if text_length == TEXT_LENGTHS[0] else None
    # Without an encoder every image must bring its reference's features (<name>_ref.safetensors).
    condition, cond_id, encoder_name = None, "features files", ""
    if kind == "face" and face_analyzer is not None:
        from ..face import encoder_name as face_encoder_name

        condition = face_condition(face_analyzer)
        pack = os.path.basename(str(getattr(face_analyzer, "pack_dir", "")).rstrip("/"))
        cond_id, encoder_name = f"insightface:{getattr(face_analyzer, 'pack_dir', '')}", face_encoder_name(pack)
    elif kind != "face" and clip_vision is not None:
        from ..clip_features import encoder_name as clip_encoder_name

        condition = clip_condition(clip_vision, kind)
        cond_id = "clip:" + module_fingerprint(getattr(clip_vision, "model", clip_vision))
        encoder_name = clip_encoder_name((names or {}).get("condition") or "")

    def encode_image(image: torch.Tensor) -> torch.Tensor:
        return base_model.process_latent_in(vae.encode(image[..., :3])).float().cpu()

    def encode_text(text: str) -> torch.Tensor:
        return t5.encode(text, fixed).float().cpu()

    views = reference_views if kind != "face" else 0
    fingerprint = {"modality": modality, "feature_kind": kind, "resolution": resolution, "text_length": text_length,
                   "buckets": bool(buckets), "reference_views": views,
                   "t5": (names or {}).get("t5") or module_fingerprint(getattr(t5, "model", None)),
                   "vae": (names or {}).get("vae") or module_fingerprint(getattr(vae, "first_stage_model", vae)),
                   "condition": (names or {}).get("condition") or cond_id}
    return CacheEncoders(encode_text, encode_image, condition, fingerprint, resolution,
                         use_masks=kind == "clip_tokens", feature_kind=kind, encoder_name=encoder_name,
                         buckets=bool(buckets), reference_views=views)
