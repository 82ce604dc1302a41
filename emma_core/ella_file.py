"""ELLA connector files: the released `ella-sd1.5-tsc-t5xl.safetensors`, and connectors that carry their own
configuration (format version 2), both loaded strictly.

The released file has no usable metadata: a file without `format=ella-connector` must be the released SD1.5
layout (93 tensors) and is checked against it key by key, exactly as before version 2 existed. A version-2
file names its configuration in its metadata (trained here, e.g. the small connector of the world the docs
measure EMMA in) and is checked against a connector built from that configuration, just as strictly:

    format          "ella-connector"
    format_version  "2"
    config          JSON of ELLAConfig, e.g. {"width": 768, "layers": 2, ...}
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from .atomic import save_safetensors_atomic
from .ella import ELLA, ELLAConfig
from .state_dict import WeightsFileError, check_state_dict, expected_shapes, read_safetensors

OFFICIAL_FILENAME = "ella-sd1.5-tsc-t5xl.safetensors"
OFFICIAL_SHA256 = "ca2018e325170d622389b531c0a061eea9d856b80e58e359ed54ade881517417"
FORMAT_NAME = "ella-connector"
FORMAT_VERSION = 2  # version 1 is the released file, which carries no format metadata


def official_shapes(config: ELLAConfig = ELLAConfig()) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return expected_shapes(ELLA(config))


def ella_from_state_dict(
    state_dict: dict[str, torch.Tensor], source: str = "state dict", dtype: torch.dtype = torch.float32,
    config: Optional[ELLAConfig] = None,
) -> ELLA:
    """A frozen connector from tensors; `config` None means the released SD1.5 layout."""
    if any(key.startswith(("emma.", "branch.")) for key in state_dict):
        raise WeightsFileError(f"{os.path.basename(source)} is an EMMA module, not an ELLA connector: "
                               "load it with the EMMA module loader")
    what = "ELLA SD1.5 connector" if config is None else f"ELLA connector ({config.describe()})"
    config = config or ELLAConfig()
    check_state_dict(state_dict, official_shapes(config), what, source)
    with torch.device("meta"):
        model = ELLA(config)
    # assign=True adopts the file's tensors; the cast below then gives the compute dtype (fp16 files
    # are common; CPU needs fp32).
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(dtype=dtype).eval().requires_grad_(False)


def config_from_metadata(metadata: dict[str, str], source: str) -> Optional[ELLAConfig]:
    """The configuration a version-2 file names, or None for the released layout."""
    name = os.path.basename(source)
    if metadata.get("format") != FORMAT_NAME:
        return None
    version = metadata.get("format_version", "")
    if version != str(FORMAT_VERSION):
        raise WeightsFileError(f"{name} is ELLA connector format version {version!r}; this version of "
                               f"ComfyUI-EMMA reads the released file and version {FORMAT_VERSION} "
                               "(update the pack for newer files)")
    try:
        return ELLAConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError) as error:
        raise WeightsFileError(f"{name} has invalid ELLA connector metadata 'config': {error}") from error


def load_ella(path: str, dtype: torch.dtype = torch.float32) -> ELLA:
    if not os.path.isfile(path):
        raise WeightsFileError(f"ELLA file not found: {path}")
    state_dict, metadata = read_safetensors(path)
    kind = metadata.get("format", "")
    if kind.startswith("emma"):
        raise WeightsFileError(f"{os.path.basename(path)} is an EMMA {metadata.get('modality', '')} module "
                               f"(metadata format={kind}), not an ELLA connector: load it with the EMMA module loader")
    return ella_from_state_dict(state_dict, path, dtype, config_from_metadata(metadata, path))


def save_ella(model: ELLA, path: str, dtype: Optional[torch.dtype] = None, extra: Optional[dict] = None) -> None:
    """A version-2 file (atomic) that carries `model.config`; `extra` adds free-form provenance metadata."""
    tensors = {k: (v.to(dtype) if dtype is not None else v) for k, v in model.state_dict().items()}
    metadata = {**(extra or {}), "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                "config": json.dumps(model.config.as_dict(), sort_keys=True)}
    save_safetensors_atomic(path, tensors, metadata)
