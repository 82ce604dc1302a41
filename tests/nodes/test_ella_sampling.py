"""ELLA in the real ComfyUI host: per-call contexts within the exactness contract (emma_core.prompt) for every
sampler/scheduler, ControlNet, the MODEL."""
import copy
import itertools

import pytest
import torch
from context_contract import WORST, assert_within_contract
from host_recording import record_calls, sample

SAMPLERS = ["euler", "dpmpp_2m", "heun"]
SCHEDULERS = ["normal", "karras", "exponential"]
POSITIVE = "a red cube on top of a blue sphere, studio light, photograph"
NEGATIVE = ""


@pytest.fixture(scope="module")
def graph(comfy_inprocess, standins):
    mapping = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    ella = mapping["EMMALoadELLA"].execute(ella_name=standins["ella"]).result[0]
    t5 = mapping["EMMALoadT5"].execute(t5_name=standins["text_encoders"], precision="auto").result[0]
    encode = mapping["EMMATextEncode"]
    positive = encode.execute(ella=ella, t5=t5, text=POSITIVE, length="flexible").result[0]
    negative = encode.execute(ella=ella, t5=t5, text=NEGATIVE, length="flexible").result[0]
    model, _clip, vae = mapping["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
    control = mapping["ControlNetLoader"]().load_controlnet(standins["controlnet"])[0]
    hint = torch.rand(1, 64, 64, 3)
    positive_cn, negative_cn = mapping["ControlNetApplyAdvanced"]().apply_controlnet(
        positive, negative, control, hint, 0.8, 0.0, 1.0, vae=vae)
    return dict(mapping=mapping, ella=ella, t5=t5, model=model, positive=positive, negative=negative,
                positive_cn=positive_cn, negative_cn=negative_cn, control=control)


def expected_context(ella, cond, timestep):
    """What a call made for this timestep alone computes (the per-call path, no table, no cache)."""
    prompt = cond[0][1]["emma_prompt"]
    with torch.no_grad():
        return prompt.context(ella.connector, torch.tensor([timestep]))


@pytest.mark.parametrize("sampler, scheduler", list(itertools.product(SAMPLERS, SCHEDULERS)))
def test_every_model_call_gets_the_context_of_its_timestep(graph, sampler, scheduler):
    mapping, ella, control = graph["mapping"], graph["ella"], graph["control"]
    applied = mapping["EMMAApplyToModel"].execute(model=graph["model"]).result[0]
    control_models = [control.control_model] if getattr(control, "control_model", None) is not None else []
    recorded, calls, hooks = record_calls(applied, ella, control_models)
    try:
        sample(mapping, recorded, graph["positive_cn"], graph["negative_cn"], sampler, scheduler)
    finally:
        for h in hooks:
            h.remove()
    control_models = control_models or [control.control_model]
    assert len(calls) >= 3
    seen_timesteps = set()
    for call in calls:
        true_t = float(recorded.model.model_sampling.timestep(call["sigma"])[0])
        seen_timesteps.add(round(true_t, 3))
        rows = call["context"].shape[0] // len(call["cond_or_uncond"])
        for i, which in enumerate(call["cond_or_uncond"]):
            cond = graph["positive_cn"] if which == 0 else graph["negative_cn"]
            want = expected_context(ella, cond, true_t)
            got = call["context"][i * rows:(i + 1) * rows]
            assert_within_contract(got, want.expand_as(got), (sampler, scheduler, which))
        # ControlNet ran on this call with the very context the UNet got
        assert len(call["control_contexts"]) == 1
        assert torch.equal(call["control_contexts"][0], call["context"].to(call["control_contexts"][0].dtype))
    assert len(seen_timesteps) >= 3  # a real schedule, not one repeated step
    assert {0, 1} <= set(itertools.chain.from_iterable(c["cond_or_uncond"] for c in calls))
    print(f"\n{sampler}/{scheduler}: worst relative error so far {WORST['relative error']:.3g}")


def test_positive_and_negative_of_different_lengths_match_each_alone(graph):
    pos, neg = graph["positive"][0][1]["emma_prompt"], graph["negative"][0][1]["emma_prompt"]
    assert pos.length != neg.length
    mapping, ella = graph["mapping"], graph["ella"]
    applied = mapping["EMMAApplyToModel"].execute(model=graph["model"]).result[0]
    recorded, calls, hooks = record_calls(applied, ella, [])
    try:
        sample(mapping, recorded, graph["positive"], graph["negative"], "euler", "karras", steps=3)
    finally:
        for h in hooks:
            h.remove()
    batched = [c for c in calls if sorted(c["cond_or_uncond"]) == [0, 1]]
    assert batched, "positive and negative were never batched into one call"
    for call in batched:
        t = float(recorded.model.model_sampling.timestep(call["sigma"])[0])
        rows = call["context"].shape[0] // 2
        for i, which in enumerate(call["cond_or_uncond"]):
            prompt = pos if which == 0 else neg
            with torch.no_grad():
                alone = ella.connector(prompt.text_features.unsqueeze(0), t)
            assert_within_contract(call["context"][i * rows:(i + 1) * rows], alone.expand(rows, -1, -1))


def test_conditioning_keeps_a_real_tensor(graph):
    tensor, meta = graph["positive"][0]
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, 64, 768) and torch.isfinite(tensor).all()
    assert graph["ella"].patcher in meta["additional_models"]


def test_apply_leaves_the_given_model_unchanged(graph):
    model = graph["model"]
    before = (copy.deepcopy(model.model_options), {k: {kk: list(vv) for kk, vv in v.items()}
                                                    for k, v in model.wrappers.items()},
              dict(model.patches), dict(model.object_patches), list(model.additional_models))
    applied = graph["mapping"]["EMMAApplyToModel"].execute(model=model).result[0]
    twice = graph["mapping"]["EMMAApplyToModel"].execute(model=applied).result[0]
    after = (model.model_options, {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()},
             dict(model.patches), dict(model.object_patches), list(model.additional_models))
    assert after == before
    assert applied is not model
    key = "emma.ella_context"
    assert any(key in v for v in applied.wrappers.values())
    # applying twice does not stack a second wrapper
    assert sum(len(v.get(key, [])) for v in twice.wrappers.values()) == 1


def test_clip_concat_puts_connector_tokens_first(graph, comfy_inprocess):
    mapping, ella, t5 = graph["mapping"], graph["ella"], graph["t5"]
    clip_tokens = torch.randn(1, 77, 768)
    clip_cond = [[clip_tokens, {"pooled_output": torch.randn(1, 768)}]]
    cond = mapping["EMMATextEncode"].execute(ella=ella, t5=t5, text=POSITIVE, length="fixed 128",
                                             clip_conditioning=clip_cond).result[0]
    prompt = cond[0][1]["emma_prompt"]
    assert prompt.length == 128
    context = prompt.context(ella.connector, torch.tensor([321.0]))
    assert context.shape == (1, 64 + 77, 768)
    with torch.no_grad():
        alone = ella.connector(prompt.text_features.unsqueeze(0), 321.0)
    assert torch.equal(context[:, :64], alone)  # one call for one timestep: the connector's own
    assert torch.equal(context[:, 64:], clip_tokens)


def test_t5_with_wrong_width_is_a_clear_error(graph):
    class NarrowT5:
        name = "tiny-512.safetensors"

        def encode(self, text, fixed):
            return torch.zeros(5, 512)

    with pytest.raises(ValueError, match=r"\[ELLA Text Encode\].*512-d features.*expects 2048"):
        graph["mapping"]["EMMATextEncode"].execute(ella=graph["ella"], t5=NarrowT5(), text="x", length="flexible")
