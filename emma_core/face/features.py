"""Face references -> EMMA face features: the one path the Face Features node and the trainer's cache share."""
from __future__ import annotations

from typing import Any, Optional

from ..adapters import Features
from .analysis import FaceAnalyzer, FaceEmbedding, embed_faces, to_uint8_rgb


def face_frames(image: Any) -> list:
    """IMAGE [B, H, W, 3] in [0, 1] -> B uint8 RGB frames (labelled "image i of B" in errors)."""
    count = image.shape[0]
    return [to_uint8_rgb(image[i], label=f"image {i + 1} of {count}") for i in range(count)]


def face_features(frames: list, analyzer: FaceAnalyzer, index: Optional[int] = None,
                  encoder: str = "") -> tuple[Features, FaceEmbedding]:
    """One identity from the frames (the largest face of each, or face `index` counted left to right; several
    frames are averaged) as face Features, and the identity (its faces, for an aligned crop). FaceError (a
    ValueError) when a frame has no usable face."""
    identity = embed_faces(frames, analyzer, index=index)
    return Features("face", {k: v.float() for k, v in identity.as_tensors().items()}, encoder), identity
