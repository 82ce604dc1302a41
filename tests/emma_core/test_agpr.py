"""AGPR block: exact identity when untrained, per-token separable gates, gradients into the zero gates,
and the gated-residual math of docs/emma-design.md checked against an independent reference."""
import torch

from emma_core.agpr import AGPRBlock
from emma_core.state_dict import expected_shapes
from reference import agpr_attention_residual, agpr_ffn_residual, realistic_state_dict


def _inputs(seed=0, tokens=64, cond_tokens=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, tokens, 768, generator=g), torch.randn(1, cond_tokens, 768, generator=g),
            torch.randn(1, 1, 768, generator=g))


def _trained_block(seed, gates=(0.8, -0.6)):
    """An AGPR block with realistic weights, keyed as block 0 of an EMMA module for the reference."""
    block = AGPRBlock()
    sd = realistic_state_dict(expected_shapes(block), seed, gates, gain=1.0)
    block.load_state_dict(sd)
    return block, {f"branch.0.{k}": v for k, v in sd.items()}


def test_untrained_block_is_exact_identity():
    block = AGPRBlock()
    latents, cond, temb = _inputs()
    with torch.no_grad():
        assert torch.equal(block(latents, cond, temb), latents)
        assert torch.count_nonzero(block.attention_residual(latents, cond, temb)) == 0
        assert torch.count_nonzero(block.ffn_residual(latents, temb)) == 0


def test_gradients_reach_the_zero_global_gates():
    block = AGPRBlock()
    latents, cond, temb = _inputs(1)
    target = torch.randn(latents.shape, generator=torch.Generator().manual_seed(9))
    (block(latents, cond, temb) * target).sum().backward()
    assert block.global_gate_attn.grad is not None and block.global_gate_attn.grad.abs() > 1e-3
    assert block.global_gate_ffn.grad is not None and block.global_gate_ffn.grad.abs() > 1e-3
    # Everything behind tanh(0) = 0 gets no gradient until A and F open: flamingo's zero-init behaviour.
    assert torch.count_nonzero(block.attn.attn.in_proj_weight.grad) == 0
    assert torch.count_nonzero(block.separable_gate.weight.grad) == 0


def test_separable_gate_varies_per_token_and_is_shared_across_channels():
    block, _ = _trained_block(seed=2, gates=(0.9, 0.9))
    latents, cond, temb = _inputs(3)
    with torch.no_grad():
        ratio = block.attention_residual(latents, cond, temb) / block.attn(latents, cond, temb)
    per_token = ratio[0, :, 0] / torch.tanh(torch.tensor(0.9))
    # One gate value per token (constant over the 768 channels) ...
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), atol=1e-4)
    # ... in (0, 1), and different tokens get visibly different gates.
    assert bool(((per_token > 0) & (per_token < 1)).all())
    assert per_token.max() - per_token.min() > 0.1, per_token


def test_block_matches_reference_formulas():
    block, sd = _trained_block(seed=4)
    latents, cond, temb = _inputs(5)
    lam = 0.7
    with torch.no_grad():
        ours = block(latents, cond, temb, scale=lam).double()
    sd = {k: v.double() for k, v in sd.items()}
    mid = latents.double() + agpr_attention_residual(sd, 0, latents.double(), cond.double(), temb.double(), lam)
    expected = mid + agpr_ffn_residual(sd, 0, mid, temb.double(), lam)
    assert (expected - latents.double()).abs().max() > 0.1  # the branch really changes the stream
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0), (ours - expected).abs().max()
