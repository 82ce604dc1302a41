"""Recording what the UNet, the connector and ControlNet see at every model call of a real sampler run."""
import torch


def record_calls(model, ella, control_models):
    """Clone `model` with a recorder at APPLY_MODEL: per call, the sigma, the UNet context and row order,
    and what the connector and the ControlNet saw since the previous call."""
    import comfy.patcher_extension

    calls, connector_steps, control_contexts = [], [], []
    hooks = [ella.connector.register_forward_pre_hook(
        lambda m, args: connector_steps.append(torch.as_tensor(args[1]).clone()))]
    for control_model in control_models:
        hooks.append(control_model.register_forward_pre_hook(
            lambda m, args, kw: control_contexts.append(kw["context"].clone()), with_kwargs=True))

    def recorder(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):
        calls.append(dict(sigma=t.clone(), context=c_crossattn.clone(),
                          cond_or_uncond=list(transformer_options["cond_or_uncond"]),
                          connector_steps=list(connector_steps), control_contexts=list(control_contexts)))
        connector_steps.clear()
        control_contexts.clear()
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)

    recorded = model.clone()
    recorded.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test.recorder", recorder)
    return recorded, calls, hooks


def sample(mapping, model, positive, negative, sampler, scheduler, steps=3, seed=7, cfg=7.0, batch=1):
    latent = mapping["EmptyLatentImage"]().generate(64, 64, batch)[0]
    with torch.inference_mode():
        return mapping["KSampler"]().sample(model, seed, steps, cfg, sampler, scheduler, positive, negative,
                                            latent, denoise=1.0)[0]["samples"]


def pack_module(name: str):
    """The pack's own module `name` (e.g. "nodes.sampling") as ComfyUI loaded it: the repo's top-level
    packages are other module objects, whose classes would not match the pack's."""
    import importlib
    import sys

    pack = next(n for n, mod in sys.modules.items() if n.endswith("ComfyUI-EMMA") and hasattr(mod, "__path__"))
    return importlib.import_module(f"{pack}.{name}")
