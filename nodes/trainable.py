"""A MODEL the training nodes can back-propagate through, without changing the one they were given.

- ComfyUI 0.16 and later stream weights per layer on NVIDIA GPUs ("dynamic VRAM"): a layer's weights exist
  only while it runs, which autograd cannot work with. A dynamic patcher is cloned with dynamic loading off
  (`clone(disable_dynamic=True)`, found by feature detection: older ComfyUI has neither) and loaded whole.
- ComfyUI runs nodes under inference_mode; tensors made there cannot take part in autograd, so they are
  replaced (same values, same module) by ordinary tensors.
"""
from __future__ import annotations

import inspect
import logging

import comfy.model_management as mm
import torch

log = logging.getLogger("ComfyUI-EMMA")


def is_dynamic(model) -> bool:
    check = getattr(model, "is_dynamic", None)
    return bool(callable(check) and check())


def training_clone(model):
    """A clone of `model` that loads whole (dynamic VRAM off where ComfyUI has it), not loaded yet."""
    if is_dynamic(model) and "disable_dynamic" in inspect.signature(model.clone).parameters:
        log.info("EMMA: training through the UNet with ComfyUI's dynamic VRAM off for this node (it streams "
                 "weights per layer, which back-propagation cannot follow); the model is loaded whole")
        return model.clone(disable_dynamic=True)
    return model.clone()


def load_for_training(clone) -> None:
    """Load `clone` whole onto its device, with plain (non-inference) frozen weights."""
    mm.load_models_gpu([clone], force_full_load=True)
    _plain_tensors(clone.model)


def trainable_model(model):
    """A clone of `model`, fully loaded, with plain (non-inference) frozen weights."""
    clone = training_clone(model)
    load_for_training(clone)
    return clone


def _plain_tensors(module: torch.nn.Module) -> None:
    """Inference-mode tensors -> ordinary ones with the same values, in place."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if p.is_inference():
                sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
        for name, b in list(sub.named_buffers(recurse=False)):
            if b is not None and b.is_inference():
                sub._buffers[name] = b.clone()
