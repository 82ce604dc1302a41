"""ELLA connector: the official layout loads strictly, and the math matches docs/ella.md written out here."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from emma_core.ella import ELLA, ELLAConfig, Group
from emma_core.prompt import CONTEXT_RTOL, ELLAPrompt, PromptRun, run_contexts
from emma_core.ella_file import ella_from_state_dict, load_ella, save_ella
from emma_core.state_dict import WeightsFileError

# The released file's table, typed from docs/ella.md (not derived from our module).
BLOCK_KEYS = {
    "attn.in_proj_weight": (2304, 768), "attn.in_proj_bias": (2304,),
    "attn.out_proj.weight": (768, 768), "attn.out_proj.bias": (768,),
    "mlp.c_fc.weight": (3072, 768), "mlp.c_fc.bias": (3072,),
    "mlp.c_proj.weight": (768, 3072), "mlp.c_proj.bias": (768,),
    "ln_1.linear.weight": (1536, 768), "ln_1.linear.bias": (1536,),
    "ln_2.linear.weight": (1536, 768), "ln_2.linear.bias": (1536,),
    "ln_ff.linear.weight": (1536, 768), "ln_ff.linear.bias": (1536,),
}
OFFICIAL = {
    "time_embedding.linear_1.weight": (768, 320), "time_embedding.linear_1.bias": (768,),
    "time_embedding.linear_2.weight": (768, 768), "time_embedding.linear_2.bias": (768,),
    "connector.latents": (64, 768),
    "connector.time_aware_linear.weight": (768, 768), "connector.time_aware_linear.bias": (768,),
    "connector.proj_in.weight": (768, 2048), "connector.proj_in.bias": (768,),
    **{f"connector.perceiver_blocks.{i}.{k}": s for i in range(6) for k, s in BLOCK_KEYS.items()},
}


def official_state_dict(seed=0, dtype=torch.float16):
    """Random tensors at the scale of trained ones (activations of order 1), so 1e-5 is a real bound."""
    g = torch.Generator().manual_seed(seed)
    def scale(shape):
        return 0.4 / math.sqrt(shape[-1]) if len(shape) == 2 else 0.02
    return {k: (torch.randn(s, generator=g) * scale(s)).to(dtype) for k, s in OFFICIAL.items()}


def test_official_table_is_93_keys_66m_params():
    assert len(OFFICIAL) == 93
    assert sum(math.prod(s) for s in OFFICIAL.values()) == 66_820_608


def test_fp16_official_state_dict_loads_strictly_and_exactly():
    sd = official_state_dict()
    model = ella_from_state_dict(sd)
    loaded = model.state_dict()
    assert set(loaded) == set(OFFICIAL)
    for key, value in sd.items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], value.float()), key


@pytest.mark.parametrize("edit, fragment", [
    (lambda sd: sd.pop("connector.perceiver_blocks.3.ln_2.linear.weight"),
     "missing key 'connector.perceiver_blocks.3.ln_2.linear.weight' (expected shape [1536, 768])"),
    (lambda sd: sd.__setitem__("connector.proj_out.weight", torch.zeros(768, 768)),
     "unexpected key 'connector.proj_out.weight'"),
    (lambda sd: sd.__setitem__("connector.proj_in.weight", torch.zeros(768, 4096)),
     "key 'connector.proj_in.weight' has shape [768, 4096], expected shape [768, 2048]"),
])
def test_bad_state_dict_names_the_key_and_expected_shape(edit, fragment):
    sd = official_state_dict()
    edit(sd)
    with pytest.raises(WeightsFileError) as info:
        ella_from_state_dict(sd, source="/models/ella/broken.safetensors")
    assert fragment in str(info.value)
    assert "broken.safetensors" in str(info.value)


# ---- an independent computation of the formulas in docs/ella.md ---------------------------------

def reference_ella(sd, text, t):
    sd = {k: v.double() for k, v in sd.items()}
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    k = torch.arange(160, dtype=torch.float64)
    freq = torch.exp(-math.log(10000.0) * k / 160)
    e0 = torch.cat([torch.cos(t[:, None] * freq), torch.sin(t[:, None] * freq)], dim=1)

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    temb = lin(F.silu(lin(e0, "time_embedding.linear_1")), "time_embedding.linear_2")[:, None, :]
    x = lin(text.double(), "connector.proj_in")
    latents = sd["connector.latents"][None] + lin(F.silu(temb), "connector.time_aware_linear")
    latents = latents.expand(max(text.shape[0], t.shape[0]), -1, -1)

    def adaln(h, name):
        shift, scale = lin(F.silu(temb), name).chunk(2, dim=-1)
        mu = h.mean(-1, keepdim=True)
        var = h.var(-1, keepdim=True, unbiased=False)
        return (h - mu) / torch.sqrt(var + 1e-6) * (1 + scale) + shift

    for i in range(6):
        p = f"connector.perceiver_blocks.{i}."
        q_in = adaln(latents, p + "ln_1.linear")
        kv_in = torch.cat([q_in, adaln(x, p + "ln_2.linear")], dim=1)
        w, b = sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]
        q = q_in @ w[:768].T + b[:768]
        kk = kv_in @ w[768:1536].T + b[768:1536]
        v = kv_in @ w[1536:].T + b[1536:]
        heads = lambda z: z.reshape(z.shape[0], z.shape[1], 8, 96).transpose(1, 2)  # noqa: E731
        attn = torch.softmax(heads(q) @ heads(kk).transpose(-1, -2) / math.sqrt(96), dim=-1) @ heads(v)
        attn = attn.transpose(1, 2).reshape(q.shape)
        latents = latents + lin(attn, p + "attn.out_proj")
        h = adaln(latents, p + "ln_ff.linear")
        latents = latents + lin(torch.relu(lin(h, p + "mlp.c_fc")) ** 2, p + "mlp.c_proj")
    return latents


@pytest.mark.parametrize("timesteps", [[981.0], [999.0, 500.0, 1.0]], ids=["one timestep", "one per row"])
def test_connector_matches_independent_formulas(timesteps):
    sd = official_state_dict(seed=1, dtype=torch.float32)
    model = ella_from_state_dict(sd)
    g = torch.Generator().manual_seed(2)
    text = torch.randn(3, 11, 2048, generator=g)
    with torch.no_grad():
        ours = model(text, torch.tensor(timesteps))
    expected = reference_ella(sd, text, timesteps)
    assert ours.shape == (3, 64, 768)
    assert expected.abs().max() > 0.5  # not a vanishing signal
    assert torch.allclose(ours.double(), expected, atol=1e-5, rtol=0), (ours.double() - expected).abs().max()


def test_per_row_timesteps_equal_separate_calls():
    model = ella_from_state_dict(official_state_dict(seed=3))
    text = torch.randn(2, 7, 2048)
    with torch.no_grad():
        both = model(text, torch.tensor([900.0, 20.0]))
        first = model(text[:1], 900.0)
        second = model(text[1:], 20.0)
    assert torch.allclose(both[0], first[0], atol=1e-5)
    assert torch.allclose(both[1], second[0], atol=1e-5)
    assert not torch.allclose(first, second, atol=1e-3)


def assert_within_contract(got, alone):
    """The exactness contract of emma_core.prompt: within CONTEXT_RTOL of the largest |value|."""
    error = float((got - alone).abs().max() / alone.abs().max())
    assert error <= CONTEXT_RTOL, error
    return error


def test_a_whole_schedule_in_one_call_equals_each_timestep_alone_within_the_contract():
    model = ella_from_state_dict(official_state_dict(seed=5)).float()
    g = torch.Generator().manual_seed(6)
    # prompts of different lengths as groups of one call, over a schedule's timesteps
    prompts = [ELLAPrompt(torch.randn(n, 2048, generator=g)) for n in (17, 1, 40)]
    timesteps = torch.tensor([999.0, 935.3, 700.0, 411.0, 250.5, 90.0, 31.2, 3.0])
    with torch.no_grad():
        whole = run_contexts([PromptRun(p, ()) for p in prompts], model, timesteps)
        again = run_contexts([PromptRun(p, ()) for p in prompts], model, timesteps)
        for prompt, contexts in zip(prompts, whole):
            assert contexts.shape == (8, 1, 64, 768)
            for i, t in enumerate(timesteps):
                alone = prompt.context(model, t.reshape(1))
                assert_within_contract(contexts[i], alone)
                # the per-call route is a run of one timestep: the connector alone gives it too
                assert torch.equal(alone, model.forward_groups([Group(prompt.text_features[None], 1)], t.reshape(1)))
    assert all(torch.equal(a, b) for a, b in zip(whole, again))  # a rerun is bit-identical


def test_attention_is_torch_multihead_attention_on_the_released_key_names():
    block = ella_from_state_dict(official_state_dict(seed=4)).float().connector.perceiver_blocks[0]
    assert isinstance(block.attn, torch.nn.MultiheadAttention) and block.attn.batch_first


def test_file_loader_accepts_fp16_file_and_refuses_other_kinds(tmp_path):
    good = tmp_path / "ella-sd1.5-tsc-t5xl.safetensors"
    save_file(official_state_dict(seed=4), str(good))
    assert isinstance(load_ella(str(good)), ELLA)

    module = tmp_path / "face.safetensors"
    save_file({"branch.0.gate": torch.zeros(1)}, str(module), metadata={"format": "emma-module", "modality": "face"})
    with pytest.raises(WeightsFileError, match="EMMA face module"):
        load_ella(str(module))

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(WeightsFileError, match="corrupt.safetensors could not be read"):
        load_ella(str(corrupt))

    pickle = tmp_path / "ella.bin"
    pickle.write_bytes(b"not read")
    with pytest.raises(WeightsFileError, match="only .safetensors"):
        load_ella(str(pickle))


SMALL = ELLAConfig(width=96, layers=2, heads=4, time_embed_dim=64, num_latents=16, input_dim=48)


def test_a_connector_file_with_its_own_configuration_loads_strictly(tmp_path):
    torch.manual_seed(0)
    model = ELLA(SMALL)
    path = tmp_path / "small-ella.safetensors"
    save_ella(model, str(path), dtype=torch.float16, extra={"trained_on": "world"})
    loaded = load_ella(str(path))
    assert loaded.config == SMALL
    assert all(torch.equal(a, b.half().float()) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        out = loaded(torch.randn(1, 5, 48), 500.0)
    assert out.shape == (1, 16, 96)

    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    assert metadata["format"] == "ella-connector" and metadata["format_version"] == "2"
    assert metadata["trained_on"] == "world"

    def rewrite(edit_tensors=None, **meta):
        t, m = dict(tensors), dict(metadata, **meta)
        if edit_tensors:
            edit_tensors(t)
        save_file(t, str(path), metadata=m)
        return str(path)

    with pytest.raises(WeightsFileError, match="missing key 'connector.perceiver_blocks.1.ln_ff.linear.bias'"):
        load_ella(rewrite(lambda t: t.pop("connector.perceiver_blocks.1.ln_ff.linear.bias")))
    with pytest.raises(WeightsFileError, match=r"key 'connector.latents' has shape \[16, 96\], expected shape \[8, 96\]"):
        load_ella(rewrite(config=json.dumps(dict(SMALL.as_dict(), num_latents=8))))
    with pytest.raises(WeightsFileError, match="format version '3'"):
        load_ella(rewrite(format_version="3"))
    with pytest.raises(WeightsFileError, match="width 96 is not divisible by heads 5"):
        load_ella(rewrite(config=json.dumps(dict(SMALL.as_dict(), heads=5))))
    # the released file has no format metadata and is held to the released layout, whatever else it says
    with pytest.raises(WeightsFileError, match="not a valid ELLA SD1.5 connector"):
        load_ella(rewrite(format="pt"))
