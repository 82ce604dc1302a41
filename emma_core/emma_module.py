"""An EMMA condition module: feature adapter + one AGPR block after each of ELLA's PR blocks, and its file.

File: .safetensors, tensors named after this module's parameters ("adapter.*", "branch.<i>.*"), and
string metadata (docs/emma-design.md, format version 2):

    format          "emma-module"
    format_version  "2"              (version 1 files, made for the released SD1.5 connector, still load)
    modality        face | object | portrait | style | custom
    feature_kind    face | clip_tokens | style
    feature_dims    JSON {"hidden": [257, 1280], "embeds": [1024]}  (batch axis left out)
    token_count     condition tokens the adapter gives, e.g. "4" or "258"
    blocks          AGPR blocks, one after each PR block: "6"
    gate_scale      lambda, e.g. "1.0" (the user's weight multiplies it)
    ella_config     JSON of the ELLA connector's configuration the branch lives in (v2; v1 = the released one)
    feature_encoder what made the features it was trained on, e.g. "CLIP ViT-H/14" ("" when unknown; v2)
    ella_sha256     sha256 of the ELLA file the module was trained against ("" when unknown)
    training_steps  optimizer steps the weights have seen
    text_length     the T5 text length it was trained with: "fixed 128" | "flexible" (absent in older files: unknown)
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .atomic import save_safetensors_atomic
from .adapters import DEFAULT_DIMS, FEATURE_KINDS, FeatureAdapter, Features, make_adapter
from .agpr import AGPRBlock
from .ella import ELLAConfig
from .state_dict import WeightsFileError, check_state_dict, expected_shapes, read_safetensors

FORMAT_NAME = "emma-module"
FORMAT_VERSION = 2
READS = ("1", "2")  # version 1: no ella_config (the released connector), no feature_encoder
MODALITIES = ("face", "object", "portrait", "style", "custom")
MODALITY_KINDS = {"face": "face", "object": "clip_tokens", "portrait": "clip_tokens", "style": "style"}
DEFAULT_TOKENS = {"face": 4, "style": 4}
FIXED_TEXT_LENGTH = 128  # emma_core.t5.FIXED_LENGTH: ELLA's training length
TEXT_LENGTHS = (f"fixed {FIXED_TEXT_LENGTH}", "flexible")  # how T5 features are cut: padded/truncated, or true


@dataclass(frozen=True)
class EMMAConfig:
    """Unset fields take the modality's defaults (custom modules must name their feature kind).

    The branch lives inside an ELLA connector, so its widths are that connector's (`ella`, by default the
    released SD1.5 one) and it has one AGPR block after each of the connector's PR blocks.
    """

    modality: str
    feature_kind: Optional[str] = None
    feature_dims: Optional[dict] = None
    num_tokens: Optional[int] = None
    blocks: Optional[int] = None
    gate_scale: float = 1.0
    ella: ELLAConfig = ELLAConfig()

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown EMMA modality {self.modality!r}; known: {', '.join(MODALITIES)}")
        kind = self.feature_kind or MODALITY_KINDS.get(self.modality)
        if kind not in FEATURE_KINDS:
            raise ValueError(f"EMMA modality {self.modality!r} needs a feature kind, one of {FEATURE_KINDS}; "
                             f"got {self.feature_kind!r}")
        dims = {k: tuple(v) for k, v in (self.feature_dims or DEFAULT_DIMS[kind]).items()}
        tokens = self.num_tokens
        if tokens is None:
            tokens = DEFAULT_TOKENS.get(kind) or dims["hidden"][0] + 1
        blocks = self.ella.layers if self.blocks is None else self.blocks
        if blocks != self.ella.layers:
            raise ValueError(f"an EMMA module has one AGPR block after each of its ELLA connector's "
                             f"{self.ella.layers} PR blocks; got blocks={self.blocks}")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "feature_kind", kind)
        object.__setattr__(self, "feature_dims", dims)
        object.__setattr__(self, "num_tokens", int(tokens))
        object.__setattr__(self, "gate_scale", float(self.gate_scale))


class EMMAModule(nn.Module):
    """Condition features -> tokens (adapter, once per call); `branch[i]` runs after ELLA's PR block i."""

    def __init__(self, config: EMMAConfig, ella_sha256: str = "", training_steps: int = 0,
                 feature_encoder: str = "", text_length: str = ""):
        super().__init__()
        self.config = config
        ella = config.ella
        self.adapter: FeatureAdapter = make_adapter(
            config.feature_kind, config.feature_dims, ella.width, config.num_tokens)
        self.branch = nn.ModuleList(
            AGPRBlock(ella.width, ella.heads, ella.time_embed_dim) for _ in range(config.blocks))
        # Provenance, written to the file: which ELLA the branch was trained against, what encoder made its
        # training features, and for how long it trained.
        self.ella_sha256 = ella_sha256
        self.training_steps = training_steps
        self.feature_encoder = feature_encoder
        self.text_length = text_length  # one of TEXT_LENGTHS, "" when unknown

    def condition_tokens(self, features: Features) -> torch.Tensor:
        return self.adapter(features)

    def metadata(self) -> dict[str, str]:
        c = self.config
        return {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "modality": c.modality,
            "feature_kind": c.feature_kind,
            "feature_dims": json.dumps({k: list(v) for k, v in c.feature_dims.items()}),
            "token_count": str(c.num_tokens),
            "blocks": str(c.blocks),
            "gate_scale": repr(c.gate_scale),
            "ella_config": json.dumps(c.ella.as_dict(), sort_keys=True),
            "feature_encoder": self.feature_encoder or "",
            "ella_sha256": self.ella_sha256 or "",
            "training_steps": str(int(self.training_steps)),
            **({"text_length": self.text_length} if self.text_length else {}),
        }

    def extra_repr(self) -> str:
        c = self.config
        return (f"modality={c.modality}, feature_kind={c.feature_kind}, tokens={c.num_tokens}, "
                f"blocks={c.blocks}, gate_scale={c.gate_scale}")


# ---- file ------------------------------------------------------------------------------------------

def save_module(module: EMMAModule, path: str, dtype: Optional[torch.dtype] = None) -> None:
    """Write `path` atomically: a crash leaves either the old file or the new one, never a torn file."""
    tensors = {k: (v.to(dtype) if dtype is not None else v) for k, v in module.state_dict().items()}
    save_safetensors_atomic(path, tensors, module.metadata())


_REQUIRED = ("modality", "feature_kind", "feature_dims", "token_count", "blocks", "gate_scale")


def config_from_metadata(metadata: dict[str, str], source: str = "metadata") -> EMMAConfig:
    name = os.path.basename(source)
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise WeightsFileError(f"{name} is an EMMA module file without the metadata {missing}")
    if metadata.get("format_version") != "1" and "ella_config" not in metadata:
        raise WeightsFileError(f"{name} is an EMMA module file without the metadata ['ella_config']")
    try:
        dims = json.loads(metadata["feature_dims"])
        ella = ELLAConfig.from_dict(json.loads(metadata["ella_config"])) if "ella_config" in metadata else ELLAConfig()
        return EMMAConfig(
            modality=metadata["modality"],
            feature_kind=metadata["feature_kind"],
            feature_dims={k: tuple(int(d) for d in v) for k, v in dims.items()},
            num_tokens=int(metadata["token_count"]),
            blocks=int(metadata["blocks"]),
            gate_scale=float(metadata["gate_scale"]),
            ella=ella,
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise WeightsFileError(f"{name} has invalid EMMA metadata: {error}") from error


def module_from_state_dict(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str], source: str = "state dict",
    dtype: torch.dtype = torch.float32,
) -> EMMAModule:
    name = os.path.basename(source)
    kind = metadata.get("format")
    if kind != FORMAT_NAME and any(key.startswith(("connector.", "time_embedding.")) for key in state_dict):
        # Checked before the format name: exporters often write {"format": "pt"} into any file.
        raise WeightsFileError(f"{name}: this is an ELLA connector, load it with Load ELLA Connector "
                               "(the EMMA module loader takes EMMA condition modules)")
    if kind is None:
        raise WeightsFileError(f"{name} has no EMMA metadata (format={FORMAT_NAME!r} expected): "
                               "not an EMMA module file")
    if kind != FORMAT_NAME:
        raise WeightsFileError(f"{name} is a {kind!r} file, not an EMMA module (format={FORMAT_NAME!r})")
    version = metadata.get("format_version", "")
    if version not in READS:
        raise WeightsFileError(f"{name} has EMMA module format version {version!r}; this version of "
                               f"ComfyUI-EMMA reads versions {', '.join(READS)} (update the pack for newer files)")
    config = config_from_metadata(metadata, source)
    sha = metadata.get("ella_sha256", "")
    if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise WeightsFileError(f"{name} has an invalid ella_sha256 {sha!r}")
    try:
        steps = int(metadata.get("training_steps", "0") or 0)
    except ValueError as error:
        raise WeightsFileError(f"{name} has invalid training_steps: {error}") from error
    try:
        with torch.device("meta"):
            module = EMMAModule(config, sha, steps, metadata.get("feature_encoder", ""),
                                metadata.get("text_length", ""))
    except ValueError as error:  # dims or token count that no adapter can take
        raise WeightsFileError(f"{name} has invalid EMMA metadata: {error}") from error
    check_state_dict(state_dict, expected_shapes(module),
                     f"EMMA {config.modality} module ({config.feature_kind} features)", source)
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.to(dtype=dtype).eval().requires_grad_(False)


def prompt_text_length(token_count: int) -> str:
    """The text length a prompt of `token_count` T5 tokens was encoded with: "fixed 128" gives exactly 128; a
    flexible prompt of exactly 128 tokens is the same input (nothing padded, nothing cut), so it counts as fixed."""
    return TEXT_LENGTHS[0] if token_count == FIXED_TEXT_LENGTH else TEXT_LENGTHS[1]


def text_length_mismatch(module: EMMAModule, token_count: int) -> Optional[str]:
    """The prompt's text length when it is not the one `module` was trained with; None when they agree or the
    module file does not say (files written before the key existed)."""
    trained = getattr(module, "text_length", "")
    if not trained:
        return None
    used = prompt_text_length(token_count)
    return None if used == trained else used


def text_length_warning(module: EMMAModule, module_name: str, token_count: int) -> Optional[str]:
    """What to tell the user when a prompt of `token_count` T5 tokens meets `module` under another text length
    than it was trained with (None when they agree, or the file does not say)."""
    used = text_length_mismatch(module, token_count)
    if used is None:
        return None
    return (f"module {module_name} was trained with text length {module.text_length!r}, but the prompt was "
            f"encoded {used!r}; it may follow its reference less well (set ELLA Text Encode's length to "
            f"{module.text_length!r})")


def load_module(path: str, dtype: torch.dtype = torch.float32) -> EMMAModule:
    if not os.path.isfile(path):
        raise WeightsFileError(f"EMMA module file not found: {path}")
    state_dict, metadata = read_safetensors(path)
    return module_from_state_dict(state_dict, metadata, path, dtype)
