"""Assembly: several EMMA modules summed into ELLA's stream, checked against the paper's formula written
out independently (tests/emma_core/reference.py), plus the schedule window and batch rules."""
import functools

import pytest
import torch

from emma_core.adapters import Features
from emma_core.assemble import Branch, ConditionInput, assembled_after_block
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


def branches(inputs):
    return [Branch(i.module, i.module.condition_tokens(i.features), i.weight) for i in inputs]


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
        per_row_zero = ella(text, T, after_block=assembled_after_block(
            [Branch(face, face.condition_tokens(features("face")), torch.zeros(1))]))
    assert torch.allclose(with_modules, alone, atol=1e-6, rtol=0)
    assert torch.equal(with_modules, alone)
    assert torch.equal(per_row_zero, alone)  # a per-row weight 0 (a dropped condition in training) adds exactly 0


@pytest.mark.parametrize("count", [2, 3])
def test_assembled_modules_match_the_papers_summed_residuals(ella, ella_sd, count):
    specs = [("face", 1, 1.0, 0.8), ("style", 2, 0.5, 1.3), ("object", 3, 1.0, 0.6)][:count]
    inputs = [ConditionInput(trained(modality, seed, gate_scale), features(trained(modality, seed, gate_scale)
                                                                           .config.feature_kind, seed=seed), weight)
              for modality, seed, gate_scale, weight in specs]
    text = text_features()
    with torch.no_grad():
        ours = ella(text, T, after_block=assembled_after_block(branches(inputs))).double()
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
            reordered = ella(text, T, after_block=assembled_after_block(branches(inputs[::-1]))).double()
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
