"""Contexts computed for the whole schedule when sampling starts (issue: sampling at the FLOP floor on a GPU).

In the real ComfyUI host, with ELLA conditioning that carries its own wrappers (no Apply node) and EMMA
conditions switched on and off along the schedule: every model call gets the context a call made for its
timestep alone computes, within emma_core.prompt.CONTEXT_RTOL (the same function computes both); a run makes one
connector call for all its ELLA prompts, not one per model call; a repeated run (new seed) makes none and gives
bit-identical contexts; latents of the per-call path are within float rounding of the precomputed ones.
"""
import itertools

import pytest
import torch
from context_contract import WORST, assert_within_contract
from host_recording import pack_module, record_calls

# The acceptance matrix (euler / heun / dpmpp_2m x normal / karras), plus a sampler that evaluates between
# the schedule's sigmas (dpm_2) and an ancestral one.
CASES = [*itertools.product(["euler", "heun", "dpmpp_2m"], ["normal", "karras"]),
         ("dpm_2", "karras"), ("euler_ancestral", "normal")]


@pytest.fixture(scope="module")
def graph(comfy_inprocess, standins):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    ella = m["EMMALoadELLA"].execute(ella_name=standins["ella"]).result[0]
    t5 = m["EMMALoadT5"].execute(t5_name=standins["text_encoders"], precision="auto").result[0]
    positive = m["EMMATextEncode"].execute(ella=ella, t5=t5, text="a red cube on a blue sphere, studio light",
                                           length="flexible").result[0]
    negative = m["EMMATextEncode"].execute(ella=ella, t5=t5, text="", length="flexible").result[0]
    model, _clip, vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
    modules = {k: m["EMMALoadModule"].execute(module_name=v).result[0] for k, v in standins["emma"].items()}
    Features = pack_module("emma_core.adapters").Features
    g = torch.Generator().manual_seed(3)
    face = Features("face", {"embedding": torch.randn(1, 512, generator=g)})
    style = Features("style", {"embeds": torch.randn(1, 1024, generator=g)})
    conds = m["EMMACondition"].execute(module=modules["face"], features=face, weight=0.8, start=0.0, end=0.6).result[0]
    conds = m["EMMACondition"].execute(module=modules["style"], features=style, weight=1.2, start=0.3, end=1.0,
                                       conditions=conds).result[0]
    emma_positive, emma_negative = m["EMMAAssemble"].execute(positive=positive, negative=negative, conditions=conds,
                                                              apply_to_negative=False).result
    control = m["ControlNetLoader"]().load_controlnet(standins["controlnet"])[0]
    positive_cn, negative_cn = m["ControlNetApplyAdvanced"]().apply_controlnet(
        emma_positive, emma_negative, control, torch.rand(1, 64, 64, 3), 0.8, 0.0, 1.0, vae=vae)
    return dict(m=m, ella=ella, model=model, positive=positive_cn, negative=negative_cn, control=control)


def run(graph, sampler, scheduler, seed=7, steps=4, batch=2, apply=False):
    m, ella = graph["m"], graph["ella"]
    model = m["EMMAApplyToModel"].execute(model=graph["model"]).result[0] if apply else graph["model"]
    control = graph["control"]
    control_models = [control.control_model] if getattr(control, "control_model", None) is not None else []
    recorded, calls, hooks = record_calls(model, ella, control_models)
    connector_calls = []  # forward (one prompt at one model call) and forward_groups (a whole schedule)
    hooks.append(ella.connector.register_forward_pre_hook(lambda mod, args: connector_calls.append(1)))
    grouped = ella.connector.forward_groups

    def counted(*args, **kwargs):
        connector_calls.append(1)
        return grouped(*args, **kwargs)

    ella.connector.forward_groups = counted
    hooks.append(type("Restore", (), {"remove": lambda self: delattr(ella.connector, "forward_groups")})())
    latent = m["EmptyLatentImage"]().generate(64, 64, batch)[0]
    try:
        with torch.inference_mode():
            out = m["KSampler"]().sample(recorded, seed, steps, 7.0, sampler, scheduler, graph["positive"],
                                         graph["negative"], latent, denoise=1.0)[0]["samples"]
    finally:
        for h in hooks:
            h.remove()
    return out, calls, len(connector_calls), recorded.model.model_sampling


@pytest.fixture
def fresh_cache(graph, monkeypatch):
    """The connector's cross-run cache emptied for this test (the one the handle had comes back after it)."""
    contexts = pack_module("nodes.contexts")
    monkeypatch.setattr(graph["ella"], "contexts", contexts.ContextCache())


def per_call_context(graph, which, model_sampling, sigma):
    """What a call made for this sigma alone computes: the prompt's own context (no table, no cache)."""
    sampling = pack_module("nodes.sampling")
    cond = (graph["positive"] if which == 0 else graph["negative"])[0][1]
    t = model_sampling.timestep(sigma.reshape(1))
    with torch.no_grad():
        return cond["emma_prompt"].context(cond["emma_connector"].connector, t,
                                           sampling.schedule_weight(model_sampling, float(sigma)))


@pytest.mark.parametrize("sampler, scheduler", CASES)
def test_contexts_within_the_contract_one_call_per_prompt_none_when_repeated(graph, fresh_cache, sampler,
                                                                              scheduler):
    latents, calls, connector_calls, model_sampling = run(graph, sampler, scheduler)
    in_between = {round(float(c["sigma"][0]), 6) for c in calls} - {round(float(s), 6) for s in
                                                                   _schedule(graph, sampler, scheduler)}
    for call in calls:
        rows = call["context"].shape[0] // len(call["cond_or_uncond"])
        for i, which in enumerate(call["cond_or_uncond"]):
            got = call["context"][i * rows:(i + 1) * rows]
            want = per_call_context(graph, which, model_sampling, call["sigma"][0])
            assert_within_contract(got, want.expand_as(got), (sampler, scheduler, which))
        assert torch.equal(call["control_contexts"][0], call["context"])
    prompts = 2  # positive (with its EMMA conditions) and the empty negative
    # one connector call for both prompts over the whole schedule, plus one per prompt at each sigma the
    # schedule does not hold (dpm_2 evaluates between steps)
    assert connector_calls == 1 + prompts * len(in_between), (connector_calls, sorted(in_between))
    again, again_calls, repeated_calls, _ = run(graph, sampler, scheduler, seed=8)
    assert repeated_calls == 0  # new seed, same prompt, conditions and schedule: all from the cache
    assert not torch.equal(again, latents)
    # the contexts of the repeated run are the first run's, bit for bit
    assert len(again_calls) == len(calls)
    assert all(torch.equal(a["context"], b["context"]) for a, b in zip(again_calls, calls))
    print(f"\n{sampler}/{scheduler}: worst relative error so far {WORST['relative error']:.3g}")


def _schedule(graph, sampler, scheduler, steps=4):
    """The sigmas KSampler samples (dpm_2 takes one step more and drops the penultimate sigma)."""
    import comfy.samplers

    return comfy.samplers.KSampler(graph["model"], steps, "cpu", sampler, scheduler).sigmas


def test_latents_follow_the_per_call_path_and_apply_changes_nothing(graph, fresh_cache, monkeypatch):
    sampling = pack_module("nodes.sampling")
    precomputed = run(graph, "dpmpp_2m", "karras")[0]
    with_apply = run(graph, "dpmpp_2m", "karras", apply=True)
    assert torch.equal(with_apply[0], precomputed) and with_apply[2] == 0  # cached; Apply adds no second pass
    monkeypatch.setattr(graph["ella"], "contexts", pack_module("nodes.contexts").ContextCache())
    monkeypatch.setattr(sampling, "RUN_LIMIT_MB", 0.0)  # above the bound: per model call, as before
    per_call, calls, connector_calls, _ = run(graph, "dpmpp_2m", "karras")
    # contexts within CONTEXT_RTOL of each other give latents within float rounding of each other
    assert torch.allclose(per_call, precomputed, rtol=0, atol=1e-4 * float(precomputed.abs().max()))
    assert connector_calls == 2 * len(calls)  # the per-call path: both prompts at every model call

