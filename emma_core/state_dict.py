"""Strict state-dict checks whose errors name the key, the expected shape and the file."""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn


class WeightsFileError(ValueError):
    """A weights file that is not what the loader expects (wrong kind, missing keys, corrupt)."""


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str, source: str
) -> None:
    """Raise one WeightsFileError listing every missing, extra and mis-shaped key."""
    problems = []
    for key, shape in expected.items():
        if key not in state_dict:
            problems.append(f"missing key {key!r} (expected shape {list(shape)})")
        elif tuple(state_dict[key].shape) != shape:
            problems.append(
                f"key {key!r} has shape {list(state_dict[key].shape)}, expected shape {list(shape)}"
            )
    problems += [f"unexpected key {key!r} (shape {list(state_dict[key].shape)})"
                 for key in state_dict if key not in expected]
    if problems:
        shown = "\n  ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise WeightsFileError(
            f"{os.path.basename(source)} is not a valid {what}: {len(problems)} problem(s):\n  {shown}{more}"
        )


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file; anything else (pickles included) is refused."""
    from safetensors import SafetensorError, safe_open

    if not str(path).lower().endswith(".safetensors"):
        raise WeightsFileError(
            f"{os.path.basename(path)}: only .safetensors files are loaded (pickled .bin/.pt/.ckpt files "
            "can run code when opened); convert it to .safetensors first"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsFileError(f"{os.path.basename(path)} could not be read as .safetensors "
                               f"(truncated or corrupt download?): {error}") from error
    return tensors, metadata


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (module files record the ELLA file they were trained on)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
