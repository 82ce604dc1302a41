"""Objects that travel on the pack's own sockets: a loaded connector and a loaded T5 encoder."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import torch

from ..emma_core.ella_file import load_ella
from ..emma_core.t5 import T5TextEncoder, compute_dtype, load_t5_encoder, load_tokenizer

log = logging.getLogger("ComfyUI-EMMA")


@dataclass
class ELLAHandle:
    name: str
    patcher: comfy.model_patcher.ModelPatcher

    @property
    def connector(self):
        return self.patcher.model


def load_ella_handle(path: str, name: str) -> ELLAHandle:
    device = mm.get_torch_device()
    dtype = torch.float16 if mm.should_use_fp16(device, prioritize_performance=False) else torch.float32
    connector = load_ella(path, dtype=dtype)
    return ELLAHandle(name, comfy.model_patcher.ModelPatcher(connector, device, mm.unet_offload_device()))


@dataclass
class T5Handle:
    name: str
    encoder: T5TextEncoder
    patcher: comfy.model_patcher.ModelPatcher

    def encode(self, text: str, fixed_length):
        if self.encoder.cached(text, fixed_length):
            return self.encoder.encode(text, fixed_length)  # a repeated prompt never touches T5
        mm.load_model_gpu(self.patcher)
        try:
            return self.encoder.encode(text, fixed_length)
        finally:
            release_from_device(self.patcher)


def release_from_device(patcher) -> None:
    """Move a model back to its offload device now. T5 (2.3 GB in fp16) is needed only while encoding;
    ComfyUI would keep it on the GPU until the UNet ran short of memory."""
    if patcher.load_device == patcher.offload_device:
        return
    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        if loaded.model is patcher and loaded.model_unload():
            mm.current_loaded_models.pop(index)
    mm.soft_empty_cache()


class _Holder(torch.nn.Module):
    """ModelPatcher assigns `.device` on its module; transformers models make that a read-only property."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


def load_t5_handle(path: str, name: str, tokenizer_dir: str, precision: str = "auto") -> T5Handle:
    device = mm.text_encoder_device()
    dtype, notice = compute_dtype(device, precision)
    if notice:
        log.info("EMMA: %s", notice)
    model = load_t5_encoder(path, dtype=dtype)
    encoder = T5TextEncoder(model, load_tokenizer(tokenizer_dir))
    patcher = comfy.model_patcher.ModelPatcher(_Holder(model), device, mm.text_encoder_offload_device())
    return T5Handle(name, encoder, patcher)
