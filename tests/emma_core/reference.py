"""Independent float64 reference for ELLA + assembled EMMA branches, written from docs/ella.md and
docs/emma-design.md with plain torch ops on state dicts (no emma_core forward is called here).

Imported by the EMMA tests as `from reference import ...` (pytest puts this folder on sys.path).
"""
import math

import torch
import torch.nn.functional as F

WIDTH, HEADS = 768, 8


def realistic_state_dict(shapes, seed, global_gates=(0.0, 0.0), gain=0.4):
    """Random tensors at trained scale: matrices ~ N(0, gain/sqrt(fan_in)) so activations stay O(1),
    LayerNorm weights near 1, other vectors small, and the scalar global gates A, F as given.
    ELLA uses gain 0.4 (as tests/emma_core/test_ella.py); EMMA branches use 1.0 so that their residuals
    are O(1) too and a 1e-5 bound really tests them."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if len(shape) == 0:
            sd[key] = torch.tensor(global_gates[0] if key.endswith("global_gate_attn") else global_gates[1])
        elif len(shape) == 1 and key.endswith("norm.weight"):
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            sd[key] = 0.02 * torch.randn(shape, generator=g)
        else:
            sd[key] = torch.randn(shape, generator=g) * gain / math.sqrt(shape[-1])
    return sd


def _lin(sd, x, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _adaln(sd, h, temb, name):
    shift, scale = _lin(sd, F.silu(temb), name).chunk(2, dim=-1)
    mu = h.mean(-1, keepdim=True)
    var = h.var(-1, keepdim=True, unbiased=False)
    return (h - mu) / torch.sqrt(var + 1e-6) * (1 + scale) + shift


def _layer_norm(sd, h, name, eps=1e-5):
    mu = h.mean(-1, keepdim=True)
    var = h.var(-1, keepdim=True, unbiased=False)
    return (h - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _mha(sd, q_in, kv_in, p):
    w, b = sd[p + "in_proj_weight"], sd[p + "in_proj_bias"]
    q = q_in @ w[:WIDTH].T + b[:WIDTH]
    k = kv_in @ w[WIDTH:2 * WIDTH].T + b[WIDTH:2 * WIDTH]
    v = kv_in @ w[2 * WIDTH:].T + b[2 * WIDTH:]
    d = WIDTH // HEADS

    def heads(z):
        return z.reshape(z.shape[0], z.shape[1], HEADS, d).transpose(1, 2)

    attn = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(d), dim=-1) @ heads(v)
    return _lin(sd, attn.transpose(1, 2).reshape(q.shape), p + "out_proj")


def adapter_tokens(sd, kind, tensors):
    """The condition tokens [B, n, 768] of docs/emma-design.md's adapters."""
    sd = {k: v.double() for k, v in sd.items()}
    t = {k: v.double() for k, v in tensors.items()}
    if kind == "face":
        e = t["embedding"] / t["embedding"].norm(dim=-1, keepdim=True)
        y = _lin(sd, e, "adapter.proj")
        return _layer_norm(sd, y.reshape(y.shape[0], -1, WIDTH), "adapter.norm")
    if kind == "style":
        y = _lin(sd, t["embeds"], "adapter.proj")
        return _layer_norm(sd, y.reshape(y.shape[0], -1, WIDTH), "adapter.norm")
    if kind == "clip_tokens":
        h = _lin(sd, t["hidden"], "adapter.proj_hidden")
        if "mask" in t:
            h = torch.cat([h[:, :1], h[:, 1:] * t["mask"][:, :, None]], dim=1)
        return torch.cat([h, _lin(sd, t["embeds"], "adapter.proj_embeds")[:, None]], dim=1)
    raise ValueError(kind)


def agpr_attention_residual(sd, j, latents, cond, temb, lam):
    """lambda * sigmoid(Linear(L)[0]) * tanh(A) * TimeAwareAttn(L, C, t) for AGPR block j."""
    p = f"branch.{j}."
    gate = torch.sigmoid(latents @ sd[p + "separable_gate.weight"][0] + sd[p + "separable_gate.bias"][0])
    q_in = _adaln(sd, latents, temb, p + "attn.ln_latents.linear")
    kv_in = torch.cat([q_in, _adaln(sd, cond, temb, p + "attn.ln_condition.linear")], dim=1)
    attn = _mha(sd, q_in, kv_in, p + "attn.attn.")
    return lam * gate[..., None] * torch.tanh(sd[p + "global_gate_attn"]) * attn


def agpr_ffn_residual(sd, j, latents, temb, lam):
    p = f"branch.{j}."
    gate = torch.sigmoid(latents @ sd[p + "separable_gate.weight"][1] + sd[p + "separable_gate.bias"][1])
    h = _adaln(sd, latents, temb, p + "ffn.ln.linear")
    ffn = _lin(sd, torch.relu(_lin(sd, h, p + "ffn.mlp.c_fc")) ** 2, p + "ffn.mlp.c_proj")
    return lam * gate[..., None] * torch.tanh(sd[p + "global_gate_ffn"]) * ffn


def reference_assembled(ella_sd, text, t, branches):
    """ELLA with, after each PR block j, the paper's summed residuals of every branch.

    branches: list of (emma state dict, condition tokens [1 or B, n, 768], lambda = gate_scale * weight).
    """
    sd = {k: v.double() for k, v in ella_sd.items()}
    branches = [({k: v.double() for k, v in b.items()}, c.double(), lam) for b, c, lam in branches]
    # The sinusoid is taken in fp32, as ELLA and ComfyUI's timestep_embedding do: at t ~ 700 fp32 angles
    # are off by ~1e-4 rad, which the branches amplify past 1e-5; everything after it is float64.
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    k = torch.arange(160, dtype=torch.float32)
    freq = torch.exp(-math.log(10000.0) * k / 160)
    e0 = torch.cat([torch.cos(t[:, None] * freq), torch.sin(t[:, None] * freq)], dim=1).double()
    temb = _lin(sd, F.silu(_lin(sd, e0, "time_embedding.linear_1")), "time_embedding.linear_2")[:, None, :]
    x = _lin(sd, text.double(), "connector.proj_in")
    rows = max(text.shape[0], t.shape[0])
    latents = sd["connector.latents"][None] + _lin(sd, F.silu(temb), "connector.time_aware_linear")
    latents = latents.expand(rows, -1, -1)
    for j in range(6):
        p = f"connector.perceiver_blocks.{j}."
        q_in = _adaln(sd, latents, temb, p + "ln_1.linear")
        kv_in = torch.cat([q_in, _adaln(sd, x, temb, p + "ln_2.linear")], dim=1)
        latents = latents + _mha(sd, q_in, kv_in, p + "attn.")
        h = _adaln(sd, latents, temb, p + "ln_ff.linear")
        latents = latents + _lin(sd, torch.relu(_lin(sd, h, p + "mlp.c_fc")) ** 2, p + "mlp.c_proj")
        if branches:
            latents = latents + sum(agpr_attention_residual(b, j, latents, c.expand(rows, -1, -1), temb, lam)
                                    for b, c, lam in branches)
            latents = latents + sum(agpr_ffn_residual(b, j, latents, temb, lam) for b, c, lam in branches)
    return latents
