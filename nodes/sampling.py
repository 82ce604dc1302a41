"""The keyed CALC_COND_BATCH wrapper that evaluates ELLA/EMMA prompts at each model call's true timestep.

It runs before ControlNet and the UNet read the conditioning, so both see the same per-step context,
and it works for every sampler and scheduler because it converts the sigma of the call itself.
A second keyed wrapper (OUTER_SAMPLE) takes flan-T5 off the compute device as sampling starts.
"""
from __future__ import annotations

import comfy.conds
import comfy.model_management
import comfy.patcher_extension
import torch

from .handles import release_t5_encoders

WRAPPER_KEY = "emma.ella_context"
RELEASE_KEY = "emma.release_t5"  # OUTER_SAMPLE: T5 leaves the compute device before the UNet is loaded
PROMPT_KEY = "emma_prompt"  # the emma_core.prompt.ELLAPrompt of a conditioning entry
CONNECTOR_KEY = "emma_connector"  # the nodes-side ELLA handle (its ModelPatcher) of that entry


def schedule_weight(model_sampling, sigma: float):
    """A condition's weight at this call: 0 outside its start/end range, mapped exactly as ComfyUI maps
    ConditioningSetTimestepRange (percent_to_sigma, both ends inclusive)."""
    def weight_at(condition) -> float:
        if model_sampling.percent_to_sigma(condition.end) <= sigma <= model_sampling.percent_to_sigma(condition.start):
            return condition.weight
        return 0.0
    return weight_at


def _with_context(entry: dict, timesteps: torch.Tensor, weight_at) -> dict:
    prompt, handle = entry[PROMPT_KEY], entry[CONNECTOR_KEY]
    connector = handle.patcher.model
    device = next(connector.parameters()).device
    if device != timesteps.device and timesteps.device.type != "cpu":
        # Normally loaded with the UNet through "additional_models"; this covers graphs that dropped them.
        comfy.model_management.load_models_gpu([p for p in entry.get("additional_models", [])])
    context = prompt.context(connector, timesteps, weight_at)
    entry = entry.copy()
    model_conds = entry["model_conds"].copy()
    model_conds["c_crossattn"] = comfy.conds.CONDCrossAttn(context)
    entry["model_conds"] = model_conds
    return entry


def ella_context_wrapper(executor, model, conds, x_in, timestep, model_options):
    timesteps = model.model_sampling.timestep(timestep)
    weight_at = schedule_weight(model.model_sampling, float(timestep.reshape(-1)[0]))
    conds = [
        None if group is None else [_with_context(c, timesteps, weight_at) if PROMPT_KEY in c else c
                                    for c in group]
        for group in conds
    ]
    return executor(model, conds, x_in, timestep, model_options)


def release_t5_wrapper(executor, *args, **kwargs):
    release_t5_encoders()
    return executor(*args, **kwargs)


def apply_to_model(model):
    """A clone of `model` that evaluates ELLA/EMMA prompts per call; the given model is untouched."""
    patched = model.clone()
    wrappers = comfy.patcher_extension.WrappersMP
    for kind, key, wrapper in ((wrappers.CALC_COND_BATCH, WRAPPER_KEY, ella_context_wrapper),
                               (wrappers.OUTER_SAMPLE, RELEASE_KEY, release_t5_wrapper)):
        patched.remove_wrappers_with_key(kind, key)
        patched.add_wrapper_with_key(kind, key, wrapper)
    return patched
