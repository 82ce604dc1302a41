"""EMMA condition features as .safetensors, so an identity or a reference can be reused without pickle."""
from __future__ import annotations

import json
import os

from .adapters import FEATURE_KINDS, Features
from .atomic import save_safetensors_atomic
from .state_dict import WeightsFileError, read_safetensors

FORMAT = "emma-features"
VERSION = 1


def save_features(features: Features, path: str, meta: dict | None = None) -> str:
    """Atomic: a crash mid-write leaves any earlier file of that name intact. What made the features goes into
    the meta as "encoder" (when known), so they keep their provenance across a save and a load."""
    meta = {**(meta or {}), **({"encoder": features.encoder} if features.encoder else {})}
    metadata = {"format": FORMAT, "format_version": str(VERSION), "feature_kind": features.kind,
                "shapes": json.dumps({k: list(v.shape) for k, v in features.tensors.items()}),
                "meta": json.dumps(meta)}
    save_safetensors_atomic(path, {k: v.float() for k, v in features.tensors.items()}, metadata)
    return path


def load_features(path: str) -> tuple[Features, dict]:
    tensors, metadata = read_safetensors(path)
    name = os.path.basename(path)
    if metadata.get("format") != FORMAT:
        found = metadata.get("format") or ("an EMMA module / ELLA weights" if tensors else "no format")
        raise WeightsFileError(f"{name} is not an EMMA features file (format {found!r}); save features with "
                               "the 'Save EMMA Features' node")
    if int(metadata.get("format_version", "0")) > VERSION:
        raise WeightsFileError(f"{name} is features format version {metadata['format_version']}; this pack "
                               f"reads up to {VERSION}: update the pack")
    kind = metadata.get("feature_kind", "")
    if kind not in FEATURE_KINDS:
        raise WeightsFileError(f"{name}: unknown feature kind {kind!r} (known: {', '.join(FEATURE_KINDS)})")
    meta = json.loads(metadata.get("meta", "{}"))
    return Features(kind, tensors, str(meta.get("encoder", ""))), meta
