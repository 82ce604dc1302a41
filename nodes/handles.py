"""Objects that travel on the pack's own sockets: a loaded connector, a loaded EMMA module, a loaded T5 encoder."""
from __future__ import annotations

import gc
import itertools
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import torch

from ..emma_core.ella_file import load_ella
from ..emma_core.emma_module import EMMAModule, load_module
from .contexts import ContextCache
from ..emma_core.t5 import T5TextEncoder, compute_dtype, load_t5_encoder, load_tokenizer

log = logging.getLogger("ComfyUI-EMMA")

_LOADS = itertools.count(1)


def load_token() -> int:
    """A number given to each connector or module when it is loaded, never given again in this process: what
    the cross-run context cache keys them by (an id() is reused once the object is freed)."""
    return next(_LOADS)


@dataclass(eq=False)
class ELLAHandle:
    name: str
    patcher: comfy.model_patcher.ModelPatcher
    contexts: ContextCache = field(default_factory=ContextCache)  # schedule contexts kept across runs
    token: int = field(default_factory=load_token)

    def __post_init__(self):
        self.patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_DETACH, self._on_unload)

    def _on_unload(self, *args) -> None:
        """ComfyUI moved the connector off its device: contexts kept on a GPU go with it (they would hold VRAM
        the next model needs); on the CPU they stay. ComfyUI's "free memory" drops the whole handle."""
        self.contexts.clear_device_tables()

    @property
    def connector(self):
        return self.patcher.model


def connector_dtype() -> torch.dtype:
    """The dtype of the connector and of every EMMA module: their residuals are summed, so they must agree."""
    return torch.float16 if mm.should_use_fp16(mm.get_torch_device(), prioritize_performance=False) else torch.float32


def load_ella_handle(path: str, name: str) -> ELLAHandle:
    device = mm.get_torch_device()
    connector = load_ella(path, dtype=connector_dtype())
    return ELLAHandle(name, comfy.model_patcher.ModelPatcher(connector, device, mm.unet_offload_device()))


@dataclass(eq=False)
class EMMAModuleHandle:
    """A loaded EMMA module on the EMMA_MODULE socket; its patcher joins the sampled model's additional models."""

    name: str
    module: EMMAModule
    patcher: comfy.model_patcher.ModelPatcher
    token: int = field(default_factory=load_token)


def load_emma_handle(path: str, name: str) -> EMMAModuleHandle:
    module = load_module(path, dtype=connector_dtype())
    return EMMAModuleHandle(name, module,
                            comfy.model_patcher.ModelPatcher(module, mm.get_torch_device(), mm.unet_offload_device()))


# Every T5 handle alive in this process, so that sampling can take them off the compute device (see
# release_t5_encoders); weak, so a handle ComfyUI's cache drops is not kept alive here.
_LIVE_T5: "weakref.WeakSet[T5Handle]" = weakref.WeakSet()


@dataclass(eq=False)
class T5Handle:
    """A flan-T5 encoder on the EMMA_T5 socket.

    T5 (1.2 B parameters) is needed only while new prompts are encoded. It stays loaded between the encodes
    of one run (positive, negative, ...) and leaves the compute device when sampling starts
    (release_t5_encoders, called from the model Apply ELLA/EMMA returns): with a GPU it moves to RAM; on a
    CPU-only machine, where RAM is the compute device's memory, its weights are freed and read from the file
    again (`reload`) for the next new prompt. keep_loaded leaves it to ComfyUI's own memory management.
    """

    name: str
    encoder: T5TextEncoder
    patcher: comfy.model_patcher.ModelPatcher
    reload: Optional[Callable[[], torch.nn.Module]] = None
    keep_loaded: bool = False

    def __post_init__(self):
        _LIVE_T5.add(self)

    @property
    def weights_loaded(self) -> bool:
        return next(self.encoder.model.parameters()).device.type != "meta"

    def encode(self, text: str, fixed_length):
        if self.encoder.cached(text, fixed_length):
            return self.encoder.encode(text, fixed_length)  # a repeated prompt never touches T5
        if not self.weights_loaded:
            self._reload()
        mm.load_model_gpu(self.patcher)
        return self.encoder.encode(text, fixed_length)

    def release(self) -> None:
        """Take T5 off the compute device now: moved to its offload device (a GPU machine), or its weights
        freed (CPU only, when it can be read again from its file); kept with keep_loaded."""
        if self.keep_loaded or not self.weights_loaded:
            return
        if self.patcher.load_device != self.patcher.offload_device:
            # ComfyUI would keep T5 on the GPU until the UNet ran short of memory.
            _unlist(self.patcher)
            mm.soft_empty_cache()
            return
        if torch.device(self.patcher.load_device) != torch.device(mm.get_torch_device()) or self.reload is None:
            return  # e.g. T5 on the CPU of a low-VRAM GPU machine, or no file to read it from again
        _unlist(self.patcher)
        self.encoder.model.to("meta")
        gc.collect()

    def _reload(self) -> None:
        t0 = time.perf_counter()
        model = self.reload()
        self.encoder.model = model
        self.patcher = comfy.model_patcher.ModelPatcher(_Holder(model), self.patcher.load_device,
                                                        self.patcher.offload_device)
        log.info("EMMA: flan-T5 %s read again from its file in %.1f s (its weights are freed while sampling "
                 "on the CPU; set keep_loaded on Load flan-T5 Encoder (ELLA) to keep them)", self.name,
                 time.perf_counter() - t0)


def release_t5_encoders() -> None:
    """Take every loaded T5 off the compute device (called as sampling starts)."""
    for handle in list(_LIVE_T5):
        handle.release()


def _unlist(patcher) -> None:
    """Drop `patcher` from ComfyUI's loaded models (unloading it to its offload device first)."""
    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        if loaded.model is patcher and loaded.model_unload():
            mm.current_loaded_models.pop(index)


class _Holder(torch.nn.Module):
    """ModelPatcher assigns `.device` on its module; transformers models make that a read-only property."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


def load_t5_handle(path: str, name: str, tokenizer_dir: str, precision: str = "auto",
                   keep_loaded: bool = False) -> T5Handle:
    device = mm.text_encoder_device()
    dtype, notice = compute_dtype(device, precision)
    if notice:
        log.info("EMMA: %s", notice)
    model = load_t5_encoder(path, dtype=dtype)
    encoder = T5TextEncoder(model, load_tokenizer(tokenizer_dir))
    patcher = comfy.model_patcher.ModelPatcher(_Holder(model), device, mm.text_encoder_offload_device())
    return T5Handle(name, encoder, patcher, reload=lambda: load_t5_encoder(path, dtype=dtype),
                    keep_loaded=keep_loaded)
