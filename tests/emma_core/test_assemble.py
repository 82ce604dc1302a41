"""Assembly: several EMMA modules summed into ELLA's stream, checked against the paper's formula written
out independently (tests/emma_core/reference.py), plus the schedule window and batch rules."""
import functools

import pytest
import torch

from emma_core.adapters import Features
from emma_core.assemble import Branch, ConditionInput, active_weight, assembled_after_block, branches_at
from emma_core.ella_file import ella_from_state_dict, official_shapes
from emma_core.emma_module import EMMAConfig, EMMAModule
from emma_core.state_dict import expected_shapes
from reference import adapter_tokens, realistic_state_dict, reference_assembled

T = 700.0


@functools.lru_cache(maxsize=None)
def trained(modality, seed, gate_scale=1.0):
    """Realistic weights with open global gates (65 M parameters: cached; tests must not modify it)."""
    with torch.device("meta"):
        module = EMMAModule(EMMAConfig(modality, gate_scale=gate_scale))
    sd = realistic_state_dict(expected_shapes(module), seed, (0.7, -0.5), gain=1.0)
    module.load_state_dict(sd, assign=True)
    return module.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def ella_sd():
    return realistic_state_dict(official_shapes(), seed=10, gain=0.4)


@pytest.fixture(scope="module")
def ella(ella_sd):
    return ella_from_state_dict(ella_sd)


def text_features(rows=1, seed=11):
    return torch.randn(rows, 5, 2048, generator=torch.Generator().manual_seed(seed))


def features(kind, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "face":
        return Features("face", {"embedding": torch.randn(batch, 512, generator=g)})
    if kind == "style":
        return Features("style", {"embeds": torch.randn(batch, 1024, generator=g)})
    mask = (torch.rand(batch, 256, generator=g) > 0.4).float()
    return Features("clip_tokens", {"hidden": torch.randn(batch, 257, 1280, generator=g),
                                    "embeds": torch.randn(batch, 1024, generator=g), "mask": mask})


# ---- schedule window ---------------------------------------------------------------------------

@pytest.mark.parametrize("weight, start, end, progress, expected", [
    (0.8, 0.0, 1.0, 0.0, 0.8),       # first step
    (0.8, 0.0, 1.0, 1.0, 0.8),       # last step
    (0.8, 0.2, 0.6, 0.2, 0.8),       # start is inclusive
    (0.8, 0.2, 0.6, 0.6, 0.8),       # end is inclusive
    (0.8, 0.2, 0.6, 0.1999, 0.0),
    (0.8, 0.2, 0.6, 0.6001, 0.0),
    (0.8, 0.7, 0.3, 0.5, 0.0),       # start > end: never active, as ComfyUI's timestep ranges
    (0.0, 0.0, 1.0, 0.5, 0.0),
    (-0.5, 0.0, 1.0, 0.5, -0.5),     # negative weights pass through (subtracting a condition)
])
def test_active_weight_window(weight, start, end, progress, expected):
    assert active_weight(weight, start, end, progress) == expected


def test_branches_at_leaves_out_inactive_modules_without_running_their_adapter():
    face, style = trained("face", 1), trained("style", 2)
    wrong = features("face")  # would raise in the style adapter if it ran
    inputs = [ConditionInput(face, features("face"), 1.0, 0.0, 0.5),
              ConditionInput(style, wrong, 1.0, 0.6, 1.0),
              ConditionInput(style, wrong, 0.0, 0.0, 1.0)]
    active = branches_at(inputs, progress=0.3)
    assert [b.module for b in active] == [face] and active[0].tokens.shape == (1, 4, 768)
    with pytest.raises(ValueError, match="expects 'style' features"):
        branches_at(inputs, progress=0.7)


# ---- exactness ----------------------------------------------------------------------------------

def test_untrained_or_zero_weight_modules_leave_ella_exactly_alone(ella):
    text = text_features()
    untrained = EMMAModule(EMMAConfig("face")).eval()  # default init: global gates 0
    face = trained("face", 1)
    with torch.no_grad():
        alone = ella(text, T)
        branches = [Branch(untrained, untrained.condition_tokens(features("face")), 1.5),
                    Branch(face, face.condition_tokens(features("face")), 0.0)]
        with_modules = ella(text, T, after_block=assembled_after_block(branches))
        via_inputs = ella(text, T, after_block=assembled_after_block(
            branches_at([ConditionInput(face, features("face"), 0.0)], progress=0.5)))
    assert torch.allclose(with_modules, alone, atol=1e-6, rtol=0)
    assert torch.equal(with_modules, alone) and torch.equal(via_inputs, alone)


@pytest.mark.parametrize("count", [2, 3])
def test_assembled_modules_match_the_papers_summed_residuals(ella, ella_sd, count):
    specs = [("face", 1, 1.0, 0.8), ("style", 2, 0.5, 1.3), ("object", 3, 1.0, 0.6)][:count]
    inputs = [ConditionInput(trained(modality, seed, gate_scale), features(trained(modality, seed, gate_scale)
                                                                           .config.feature_kind, seed=seed), weight)
              for modality, seed, gate_scale, weight in specs]
    text = text_features()
    with torch.no_grad():
        ours = ella(text, T, after_block=assembled_after_block(branches_at(inputs, progress=0.5))).double()
    reference_branches = [
        (item.module.state_dict(), adapter_tokens(item.module.state_dict(), item.features.kind, item.features.tensors),
         gate_scale * weight)
        for item, (_, _, gate_scale, weight) in zip(inputs, specs)
    ]
    expected = reference_assembled(ella_sd, text, T, reference_branches)
    alone = reference_assembled(ella_sd, text, T, [])
    assert expected.abs().max() > 0.5
    assert (expected - alone).abs().max() > 0.5  # the branches change the stream substantially
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0), (ours - expected).abs().max()
    if count == 3:  # summing makes the order of the modules irrelevant
        with torch.no_grad():
            reordered = ella(text, T, after_block=assembled_after_block(branches_at(inputs[::-1], 0.5))).double()
        assert torch.allclose(reordered, ours, atol=1e-5, rtol=0)


# ---- batch --------------------------------------------------------------------------------------

def test_batch_one_features_broadcast_and_per_row_features_match_separate_calls(ella):
    face = trained("face", 1)
    text = text_features(rows=2)
    timesteps = torch.tensor([900.0, 300.0])
    one, other = features("face", seed=5), features("face", seed=6)

    def run(text, timesteps, *rows):
        f = Features("face", {"embedding": torch.cat([r.tensors["embedding"] for r in rows])})
        return ella(text, timesteps, after_block=assembled_after_block([Branch(face, face.condition_tokens(f), 0.9)]))

    with torch.no_grad():
        broadcast = run(text, timesteps, one)
        twice = run(text, timesteps, one, one)
        assert torch.allclose(broadcast, twice, atol=1e-5, rtol=0), (broadcast - twice).abs().max()
        per_row = run(text, timesteps, one, other)
        assert torch.allclose(per_row[0], broadcast[0], atol=1e-5, rtol=0)
        assert torch.allclose(per_row[1], run(text[1:], timesteps[1], other)[0], atol=1e-5, rtol=0)
        assert not torch.allclose(per_row[1], broadcast[1], atol=1e-3)
        with pytest.raises(ValueError, match="features have 3 rows but the ELLA latents have 2"):
            run(text, timesteps, one, one, other)
