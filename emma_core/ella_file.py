"""Loading the released ELLA file (`ella-sd1.5-tsc-t5xl.safetensors`) strictly."""
from __future__ import annotations

import os

import torch

from .ella import ELLA, ELLAConfig
from .state_dict import WeightsFileError, check_state_dict, expected_shapes, read_safetensors

OFFICIAL_FILENAME = "ella-sd1.5-tsc-t5xl.safetensors"
OFFICIAL_SHA256 = "ca2018e325170d622389b531c0a061eea9d856b80e58e359ed54ade881517417"


def official_shapes(config: ELLAConfig = ELLAConfig()) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return expected_shapes(ELLA(config))


def ella_from_state_dict(
    state_dict: dict[str, torch.Tensor], source: str = "state dict", dtype: torch.dtype = torch.float32
) -> ELLA:
    if any(key.startswith(("emma.", "branch.")) for key in state_dict):
        raise WeightsFileError(f"{os.path.basename(source)} is an EMMA module, not an ELLA connector: "
                               "load it with the EMMA module loader")
    check_state_dict(state_dict, official_shapes(), "ELLA SD1.5 connector", source)
    with torch.device("meta"):
        model = ELLA()
    # assign=True adopts the file's tensors; the cast below then gives the compute dtype (fp16 files
    # are common; CPU needs fp32).
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(dtype=dtype).eval().requires_grad_(False)


def load_ella(path: str, dtype: torch.dtype = torch.float32) -> ELLA:
    if not os.path.isfile(path):
        raise WeightsFileError(f"ELLA file not found: {path}")
    state_dict, metadata = read_safetensors(path)
    kind = metadata.get("format", "")
    if kind.startswith("emma"):
        raise WeightsFileError(f"{os.path.basename(path)} is an EMMA {metadata.get('modality', '')} module "
                               f"(metadata format={kind}), not an ELLA connector: load it with the EMMA module loader")
    return ella_from_state_dict(state_dict, path, dtype)
