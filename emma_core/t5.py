"""flan-t5-xl encoder features for ELLA: loading from one .safetensors or an HF folder, and encoding.

The tokenizer directory is passed in (the node layer hands over ComfyUI's bundled T5 tokenizer), so
nothing here touches the network.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections import OrderedDict
from typing import Optional

import torch

from .state_dict import WeightsFileError, read_safetensors

log = logging.getLogger(__name__)

FIXED_LENGTH = 128  # ELLA was trained on T5 features padded/truncated to 128 tokens
_PREFIXES = ("text_encoders.t5xl.transformer.", "transformer.", "model.", "t5.")


def encoder_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Keep the encoder of any common T5 layout (encoder-only, full seq2seq, prefixed) in HF key names."""
    for prefix in _PREFIXES:
        if any(k.startswith(prefix + "encoder.block.") for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            break
    out = {k: v for k, v in state_dict.items() if k.startswith("encoder.") or k == "shared.weight"}
    if not any(k.startswith("encoder.block.") for k in out):
        raise WeightsFileError(
            f"{os.path.basename(source)} does not look like a T5 encoder (no 'encoder.block.*' keys); "
            "expected flan-t5-xl in Hugging Face key names, e.g. a text_encoders/*.safetensors file"
        )
    embedding = out.get("shared.weight", out.get("encoder.embed_tokens.weight"))
    if embedding is None:
        raise WeightsFileError(f"{os.path.basename(source)}: T5 encoder without token embeddings "
                               "('shared.weight' or 'encoder.embed_tokens.weight')")
    out["shared.weight"] = embedding
    out["encoder.embed_tokens.weight"] = embedding
    return out


def config_from_state_dict(state_dict: dict[str, torch.Tensor]):
    from transformers import T5Config

    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.block\.(\d+)\.", k))}
    bias = state_dict["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = bias.shape[1]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state_dict
    d_ff = state_dict["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"].shape[0]
    return T5Config(
        vocab_size=state_dict["shared.weight"].shape[0],
        d_model=state_dict["shared.weight"].shape[1],
        d_kv=state_dict["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
        num_heads=heads,
        d_ff=d_ff,
        num_layers=max(layers) + 1,
        relative_attention_num_buckets=bias.shape[0],
        feed_forward_proj="gated-gelu" if gated else "relu",
        is_encoder_decoder=False,
        use_cache=False,
    )


def _read_folder(folder: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Encoder tensors of an HF folder; decoder shards of a full seq2seq checkpoint are never read in."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        pickles = [os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.bin"))]
        hint = f" (found {', '.join(pickles)}: pickled weights are not loaded)" if pickles else ""
        raise WeightsFileError(f"{folder}: no .safetensors weights in this T5 folder{hint}")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise WeightsFileError(f"{folder}: this T5 folder has no config.json. A Hugging Face folder holds its "
                               "config.json next to the .safetensors: copy it there from the same release "
                               "(google/flan-t5-xl), or put the encoder in text_encoders as one .safetensors file")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsFileError(f"{config_path} could not be read as JSON: {error}") from error
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    if key.startswith(("encoder.", "shared.")) or ".encoder.block." in key:
                        tensors[key] = f.get_tensor(key)
        except Exception as error:  # safetensors raises several types for a damaged file
            raise WeightsFileError(f"{path} could not be read as .safetensors: {error}") from error
    return tensors, config


def load_t5_encoder(path: str, dtype: torch.dtype = torch.float32):
    """A transformers T5EncoderModel from one .safetensors file or a Hugging Face layout folder."""
    from transformers import T5Config, T5EncoderModel

    if os.path.isdir(path):
        raw, config_dict = _read_folder(path)
    elif os.path.isfile(path):
        raw, config_dict = read_safetensors(path)[0], None
    else:
        raise WeightsFileError(f"T5 encoder not found: {path}")
    state_dict = encoder_state_dict(raw, path)
    config = config_from_state_dict(state_dict)
    if config_dict is not None:  # an HF folder's own config wins where it says more (e.g. max distance)
        config = T5Config(**{**config.to_dict(), **{k: v for k, v in config_dict.items()
                                                    if k.startswith(("relative_attention", "layer_norm"))}})
    with torch.device("meta"):
        model = T5EncoderModel(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [k for k in missing if k != "encoder.embed_tokens.weight"]
    if missing or unexpected:
        raise WeightsFileError(f"{os.path.basename(path)}: T5 encoder keys do not match its own config: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights() if hasattr(model, "tie_weights") else None
    return model.to(dtype=dtype).eval().requires_grad_(False)


def compute_dtype(device: torch.device, requested: str = "auto") -> tuple[torch.dtype, Optional[str]]:
    """fp16 on GPU (what ELLA was trained with); fp32 on CPU, where fp16 matmuls are often missing."""
    device = torch.device(device)
    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if device.type == "cpu":
        if requested in ("fp16", "bf16"):
            return torch.float32, f"T5 runs in fp32 on the CPU ({requested} matmuls are not available there)"
        return torch.float32, "T5 runs in fp32 on the CPU; ELLA was trained with fp16 T5 on GPU"
    if requested == "auto":
        return torch.float16, None
    return names[requested], None


def load_tokenizer(tokenizer_dir: str):
    from transformers import T5TokenizerFast

    path = os.path.join(tokenizer_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"T5 tokenizer not found: {path}")
    return T5TokenizerFast(tokenizer_file=path)


class T5TextEncoder:
    """Tokeniser + encoder; returns unpadded fp32 CPU features and caches repeated prompts."""

    def __init__(self, model, tokenizer, cache_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self._cache: OrderedDict[tuple[str, Optional[int]], torch.Tensor] = OrderedDict()
        self.cache_size = cache_size

    @property
    def width(self) -> int:
        return self.model.config.d_model

    def token_ids(self, text: str, fixed_length: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if fixed_length:
            enc = self.tokenizer(text, max_length=fixed_length, padding="max_length", truncation=True,
                                 return_tensors="pt")
        else:
            enc = self.tokenizer(text, return_tensors="pt")  # EOS appended, no BOS, no padding
        return enc.input_ids, enc.attention_mask

    def cached(self, text: str, fixed_length: Optional[int] = None) -> bool:
        return (text, fixed_length) in self._cache

    @torch.no_grad()
    def encode(self, text: str, fixed_length: Optional[int] = None) -> torch.Tensor:
        """[N, width] features; N = true token count (flexible) or fixed_length (padded, as trained)."""
        key = (text, fixed_length)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        ids, mask = self.token_ids(text, fixed_length)
        param = next(self.model.parameters())
        hidden = self.model(input_ids=ids.to(param.device), attention_mask=mask.to(param.device)).last_hidden_state
        features = hidden[0].float().cpu()
        self._cache[key] = features
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return features
