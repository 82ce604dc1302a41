"""How ELLA/EMMA prompts reach the UNet at sampling time: the context of every model call, at its true timestep.

Three keyed wrappers, registered on the model by Apply ELLA/EMMA to Model and carried by every ELLA
conditioning as a ComfyUI conditioning hook (so a graph without Apply is exact too):

- SAMPLER_SAMPLE (`emma.ella_schedule`): when sampling starts, the contexts of every ELLA/EMMA entry at every
  sigma of the run's schedule are computed in one connector call (all entries, positive and negative, as
  groups of that call), with each condition's start/end weight at that sigma, and attached to the entries. A repeated run (new seed, same settings) finds them in
  the connector's cache and makes no connector call at all.
- CALC_COND_BATCH (`emma.ella_context`): at each model call, before ControlNet and the UNet read the
  conditioning, the entry's context is looked up by the call's exact sigma; a sigma the schedule does not hold
  (samplers that evaluate between steps, e.g. dpm_2) is computed on the spot, by the same function (a run of
  one sigma: emma_core.prompt.run_contexts); the looked-up context equals the one computed for its sigma
  alone within emma_core.prompt.CONTEXT_RTOL.
- OUTER_SAMPLE (`emma.release_t5`): flan-T5 leaves the compute device before the UNet is loaded.

Where Apply and the hook both register them, the second of each does nothing (entries already handled).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import comfy.conds
import comfy.hooks
import comfy.model_management
import comfy.patcher_extension
import torch

from ..emma_core.prompt import PromptRun, run_contexts

from .contexts import schedule_key
from .handles import ELLAHandle, release_t5_encoders

log = logging.getLogger("ComfyUI-EMMA")

WRAPPER_KEY = "emma.ella_context"
SCHEDULE_KEY = "emma.ella_schedule"
RELEASE_KEY = "emma.release_t5"  # OUTER_SAMPLE: T5 leaves the compute device before the UNet is loaded
PROMPT_KEY = "emma_prompt"  # the emma_core.prompt.ELLAPrompt of a conditioning entry
CONNECTOR_KEY = "emma_connector"  # the nodes-side ELLA handle (its ModelPatcher) of that entry
CONTEXTS_KEY = "emma_contexts"  # {sigma: context} of the entry for this run (set by the SAMPLER_SAMPLE wrapper)

# The contexts one run may precompute, in MiB: above it that run computes them per call, as before.
RUN_LIMIT_MB = float(os.environ.get("EMMA_CONTEXT_RUN_MB", "512"))


def schedule_weight(model_sampling, sigma: float):
    """A condition's weight at this call: 0 outside its start/end range, mapped exactly as ComfyUI maps
    ConditioningSetTimestepRange (percent_to_sigma, both ends inclusive)."""
    def weight_at(condition) -> float:
        if model_sampling.percent_to_sigma(condition.end) <= sigma <= model_sampling.percent_to_sigma(condition.start):
            return condition.weight
        return 0.0
    return weight_at


# ---- the wrappers ---------------------------------------------------------------------------------------------
@dataclass
class EntryPlan:
    """One ELLA/EMMA conditioning entry over the run's sigmas."""

    entry: dict
    handle: ELLAHandle
    run: PromptRun  # the prompt and each condition's weight at every sigma of the run
    key: str  # its contexts in the handle's cache
    bytes: int  # what its contexts take


def _plan(entry: dict, model_sampling, sigmas: torch.Tensor, timesteps: torch.Tensor) -> EntryPlan:
    prompt, handle = entry[PROMPT_KEY], entry[CONNECTOR_KEY]
    weights = tuple(torch.tensor([schedule_weight(model_sampling, float(s))(c) for s in sigmas], dtype=torch.float64)
                    for c in prompt.conditions)
    run = PromptRun(prompt, weights)
    config = handle.connector.config
    rows = max([1, *(c.features.batch for c in prompt.conditions)])
    tokens = config.num_latents + (0 if prompt.clip_tokens is None else prompt.clip_tokens.shape[0])
    size = sigmas.numel() * rows * tokens * config.width * next(handle.connector.parameters()).element_size()
    return EntryPlan(entry, handle, run, schedule_key(handle, run, timesteps), size)


def attach_schedules(entries: list, model_sampling, sigmas: torch.Tensor) -> None:
    """Attach {float sigma: context [R, T, w]} for every sigma > 0 of the run to each ELLA/EMMA entry, from the
    connector's cache or ONE connector call for all entries that share a connector (prompts of different
    lengths run as groups of that call). Above RUN_LIMIT_MB for the run, entries get no table and the run
    computes per call, as before."""
    sigmas = sigmas.reshape(-1).float().cpu()
    sigmas = torch.unique(sigmas[sigmas > 0]).flip(0)
    if sigmas.numel() == 0 or not entries:
        return
    timesteps = model_sampling.timestep(sigmas.to(model_sampling.sigmas.device)).float().cpu()
    plans = [_plan(e, model_sampling, sigmas, timesteps) for e in entries]
    size = sum(p.bytes for p in plans)
    if size > RUN_LIMIT_MB * 2**20:
        log.info("EMMA: the contexts of this run (%.0f MiB) exceed EMMA_CONTEXT_RUN_MB=%g: computing them per "
                 "model call instead", size / 2**20, RUN_LIMIT_MB)
        for p in plans:
            p.entry[CONTEXTS_KEY] = None
        return
    tables: dict = {}  # key -> {sigma: context}
    missing: dict = {}  # handle -> {key: plan} not cached: one connector call per handle
    for p in plans:
        table = p.handle.contexts.get(p.key)
        if table is not None:
            tables[p.key] = table
        else:  # positive and negative may carry the same prompt under one key: computed once
            missing.setdefault(p.handle, {}).setdefault(p.key, p)
    for handle, todo in missing.items():
        todo = list(todo.values())
        if next(handle.connector.parameters()).device.type == "cpu" and \
                comfy.model_management.get_torch_device().type != "cpu":
            comfy.model_management.load_models_gpu(list(todo[0].entry.get("additional_models", [])))
        with torch.no_grad():
            contexts = run_contexts([p.run for p in todo], handle.connector, timesteps)
        for p, per_sigma in zip(todo, contexts):
            tables[p.key] = {float(s): per_sigma[i] for i, s in enumerate(sigmas.tolist())}
            handle.contexts.put(p.key, tables[p.key])
        log.info("EMMA: contexts of %d prompt(s) at %d sigmas, %.2f MiB (bound EMMA_CONTEXT_RUN_MB=%g), in one "
                 "connector call", len(todo), sigmas.numel(), sum(p.bytes for p in todo) / 2**20, RUN_LIMIT_MB)
    for p in plans:
        p.entry[CONTEXTS_KEY] = tables[p.key]


def ella_schedule_wrapper(executor, guider, sigmas, *args, **kwargs):
    entries = [entry for group in guider.conds.values() for entry in group or []
               if PROMPT_KEY in entry and CONTEXTS_KEY not in entry]
    attach_schedules(entries, guider.inner_model.model_sampling, sigmas)
    return executor(guider, sigmas, *args, **kwargs)


def _with_context(entry: dict, timesteps: torch.Tensor, sigma: float, weight_at) -> dict:
    table = entry.get(CONTEXTS_KEY)
    context = None if table is None else table.get(sigma)
    if context is None:  # a sigma between the schedule's steps (dpm_2, ...) or a run above the bound
        prompt, connector = entry[PROMPT_KEY], entry[CONNECTOR_KEY].connector
        device = next(connector.parameters()).device
        if device != timesteps.device and timesteps.device.type != "cpu":
            # Normally loaded with the UNet through "additional_models"; this covers graphs that dropped them.
            comfy.model_management.load_models_gpu([p for p in entry.get("additional_models", [])])
        context = prompt.context(connector, timesteps, weight_at)
        if table is not None and sigma == sigma:  # kept for the next run of this schedule (NaN: mixed sigmas)
            table[sigma] = context
    entry = entry.copy()
    del entry[PROMPT_KEY]  # handled: a second registration of this wrapper passes it on untouched
    model_conds = entry["model_conds"].copy()
    model_conds["c_crossattn"] = comfy.conds.CONDCrossAttn(context)
    entry["model_conds"] = model_conds
    return entry


def ella_context_wrapper(executor, model, conds, x_in, timestep, model_options):
    if any(PROMPT_KEY in c for group in conds if group is not None for c in group):
        timesteps = model.model_sampling.timestep(timestep)
        sigmas = timestep.reshape(-1)
        sigma = float(sigmas[0]) if bool((sigmas == sigmas[0]).all()) else float("nan")
        weight_at = schedule_weight(model.model_sampling, float(sigmas[0]))
        conds = [
            None if group is None else [_with_context(c, timesteps, sigma, weight_at) if PROMPT_KEY in c else c
                                        for c in group]
            for group in conds
        ]
    return executor(model, conds, x_in, timestep, model_options)


def release_t5_wrapper(executor, *args, **kwargs):
    release_t5_encoders()
    return executor(*args, **kwargs)


WRAPPERS = ((comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, ella_context_wrapper),
            (comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, SCHEDULE_KEY, ella_schedule_wrapper),
            (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, RELEASE_KEY, release_t5_wrapper))


def apply_to_model(model):
    """A clone of `model` with the wrappers (the given model is untouched). ELLA conditioning brings the same
    wrappers through its hook, so this is optional; it stays for graphs that have it."""
    patched = model.clone()
    for kind, key, wrapper in WRAPPERS:
        patched.remove_wrappers_with_key(kind, key)
        patched.add_wrapper_with_key(kind, key, wrapper)
    return patched


def _hooks() -> comfy.hooks.HookGroup:
    """One hook group for every ELLA conditioning: ComfyUI batches entries by hook group, so positive and
    negative must share the object; the hook applies to the whole run (AllConditioning)."""
    wrappers: dict = {}
    for kind, key, wrapper in WRAPPERS:
        wrappers.setdefault(kind, {})[key] = [wrapper]
    group = comfy.hooks.HookGroup()
    group.add(comfy.hooks.TransformerOptionsHook({"wrappers": wrappers}, comfy.hooks.EnumHookScope.AllConditioning))
    return group


ELLA_HOOKS = _hooks()
