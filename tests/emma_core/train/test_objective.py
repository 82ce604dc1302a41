"""The trainer's context is the inference context: one gated-residual function serves both
(emma_core.assemble.assembled_after_block), so a module trains on exactly what sampling gives it."""
import pytest
import torch

from emma_core.adapters import Features
from emma_core.assemble import ConditionInput
from emma_core.ella import ELLA, ELLAConfig
from emma_core.emma_module import EMMAConfig, EMMAModule
from emma_core.prompt import ELLAPrompt
from emma_core.train.objective import EMMATask

SMALL = ELLAConfig(time_channels=64, time_embed_dim=64, width=64, layers=2, heads=4, num_latents=8, input_dim=32)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    ella = ELLA(SMALL).eval()
    module = EMMAModule(EMMAConfig("face", feature_dims={"embedding": (16,)}, gate_scale=0.8, ella=SMALL)).eval()
    for block in module.branch:  # open the gates: an untrained module is an exact identity
        torch.nn.init.constant_(block.global_gate_attn, 0.6)
        torch.nn.init.constant_(block.global_gate_ffn, -0.4)
    task = EMMATask(module, ella, denoiser=lambda *args: None, text_dropout=0.0)
    return ella, module, task


def face(seed, rows=1):
    return Features("face", {"embedding": torch.randn(rows, 16, generator=torch.Generator().manual_seed(seed))})


def test_trainer_context_equals_the_inference_context(parts):
    ella, module, task = parts
    g = torch.Generator().manual_seed(1)
    for seed, (length, timestep, kept) in enumerate([(5, 700, True), (7, 120, True), (6, 455, False)]):
        text, features, timesteps = torch.randn(length, 32, generator=g), face(seed), torch.tensor([timestep])
        with torch.no_grad():
            trained = task.context([text], timesteps, features, keep_cond=torch.tensor([kept]))
            prompt = ELLAPrompt(text, conditions=[ConditionInput(module, features, 1.0)] if kept else [])
            expected = prompt.context(ella, timesteps.float())
            text_only = ELLAPrompt(text).context(ella, timesteps.float())
        assert torch.equal(trained, expected), (seed, (trained - expected).abs().max())
        # the module does act: with its condition the context is not the text-only one
        assert (trained - text_only).abs().max() > 1e-2 if kept else torch.equal(trained, text_only)


def test_rows_batched_by_length_agree_with_separate_calls(parts):
    # Lengths interleaved: the rows go through one connector call grouped by length and must come back in
    # their own order, each as its call alone would give it.
    ella, module, task = parts
    g = torch.Generator().manual_seed(3)
    lengths, kept = [5, 7, 5, 6, 7], [True, False, True, True, False]
    texts = [torch.randn(n, 32, generator=g) for n in lengths]
    timesteps = torch.tensor([900, 10, 300, 512, 77])
    features = face(4, rows=len(lengths))
    with torch.no_grad():
        batched = task.context(texts, timesteps, features, keep_cond=torch.tensor(kept))
        for row in range(len(lengths)):
            alone = task.context(texts[row:row + 1], timesteps[row:row + 1],
                                 Features("face", {"embedding": features.tensors["embedding"][row:row + 1]}),
                                 keep_cond=torch.tensor([kept[row]]))
            assert torch.allclose(batched[row], alone[0], atol=1e-5, rtol=0), row
