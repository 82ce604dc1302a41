"""UMM-Diffusion in the real host: pseudo-word replacement and the mixed guidance."""
import pytest
import torch

S, W = 6.0, 0.4
PROMPT = "a photo of a dog playing on the beach at sunset"


@pytest.fixture(scope="module")
def umm(comfy_inprocess, standins):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    model, clip, _vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
    projector = m["UMMLoadProjector"].execute(standins["umm"]).result[0]
    vision_output = {"image_embeds": torch.randn(1, 1024, generator=torch.Generator().manual_seed(3))}
    h_u, h_y = m["UMMSubjectEncode"].execute(clip, PROMPT, "dog", vision_output, projector).result
    negative = m["CLIPTextEncode"]().encode(clip, "")[0]
    return dict(m=m, model=model, clip=clip, projector=projector, vision_output=vision_output, h_u=h_u, h_y=h_y,
                negative=negative)


def test_only_the_subject_word_positions_change(umm):
    h_u, h_y = umm["h_u"][0][0], umm["h_y"][0][0]
    changed = (h_u - h_y).abs().amax(dim=-1)[0].nonzero().flatten().tolist()
    tokens = umm["clip"].tokenize(PROMPT)["l"][0]
    dog = [t for t, _w in umm["clip"].tokenize("dog")["l"][0][1:2]]
    assert changed == [i for i, (t, _w) in enumerate(tokens) if t in dog]
    assert len(changed) == 1
    pseudo = umm["projector"](umm["vision_output"]["image_embeds"])
    assert torch.allclose(h_u[0, changed[0]], pseudo[0].to(h_u.dtype))


def test_missing_subject_word_is_a_clear_error(umm):
    with pytest.raises(ValueError, match=r"\[UMM Subject Encode\].*subject word 'cat' does not occur"):
        umm["m"]["UMMSubjectEncode"].execute(umm["clip"], PROMPT, "cat", umm["vision_output"], umm["projector"])


def test_projector_refuses_embeddings_of_another_width(umm):
    with pytest.raises(ValueError, match=r"clip-vit-h-14 embeddings of width 1024; got width 768"):
        umm["m"]["UMMSubjectEncode"].execute(umm["clip"], PROMPT, "dog", {"image_embeds": torch.zeros(1, 768)},
                                             umm["projector"])


def run(umm, guider, steps, seed=11):
    m = umm["m"]
    noise = m["RandomNoise"].execute(seed).result[0]
    sampler = m["KSamplerSelect"].execute("euler").result[0]
    sigmas = m["BasicScheduler"].execute(umm["model"], "normal", steps, 1.0).result[0]
    latent = m["EmptyLatentImage"]().generate(64, 64, 1)[0]
    with torch.inference_mode():
        return m["SamplerCustomAdvanced"].execute(noise, guider, sampler, sigmas, latent).result[0]["samples"]


def test_guider_equals_the_formula_computed_from_separate_predictions(umm):
    m = umm["m"]
    # one euler step from sigma_max to 0 returns the guider's prediction itself
    mixed = run(umm, m["UMMGuider"].execute(umm["model"], umm["h_u"], umm["h_y"], umm["negative"], S, W).result[0], 1)
    alone = {name: run(umm, m["CFGGuider"].execute(umm["model"], cond, umm["negative"], 1.0).result[0], 1)
             for name, cond in (("u", umm["h_u"]), ("y", umm["h_y"]), ("empty", umm["negative"]))}
    expected = alone["empty"] + S * ((1 - W) * (alone["y"] - alone["empty"]) + W * (alone["u"] - alone["empty"]))
    # separate (unbatched) model calls differ from a batched one by float rounding, amplified by s
    tol = 1e-4 * float(expected.abs().max())
    assert float((S * W * (alone["u"] - alone["y"])).abs().max()) > 20 * tol  # the subject term is not noise
    assert float((mixed - expected).abs().max()) < tol


def test_guider_equals_stock_dual_cfg_with_cfg1_sw_cfg2_s(umm):
    m = umm["m"]
    ours = run(umm, m["UMMGuider"].execute(umm["model"], umm["h_u"], umm["h_y"], umm["negative"], S, W).result[0], 3)
    stock = run(umm, m["DualCFGGuider"].execute(umm["model"], umm["h_u"], umm["h_y"], umm["negative"], S * W, S,
                                                "regular").result[0], 3)
    assert torch.allclose(ours, stock, atol=1e-5, rtol=1e-5), (ours - stock).abs().max()
    other_w = run(umm, m["UMMGuider"].execute(umm["model"], umm["h_u"], umm["h_y"], umm["negative"], S, 0.9).result[0], 3)
    assert (other_w - ours).abs().max() > 1e-3  # w is a real knob


def test_projector_trained_on_the_shared_trainer_drives_the_workflow(umm, comfy_server, models_root, tmp_path):
    """Real dimensions (ViT-H 1024 -> CLIP-L 768), the tiny SD1.5 UNet as the frozen denoiser, a few steps of
    the shared loop; the saved file loads and runs the shipped UMM workflow on the server."""
    from pathlib import Path

    from devtools.run_workflow import run_with_file
    from emma_core.train.cache import InMemoryDataset
    from emma_core.train.loop import TrainConfig, train
    from emma_core.train.objective import comfy_epsilon_denoiser
    from emma_core.train.umm import UMMTask
    from emma_core.umm import UMMProjector, load_projector, save_projector

    h_y = umm["h_y"][0][0][0].float()
    positions = (umm["h_u"][0][0][0] - umm["h_y"][0][0][0]).abs().amax(-1).nonzero().flatten().tolist()
    g = torch.Generator().manual_seed(0)
    samples = [{"latents": torch.randn(4, 8, 8, generator=g), "h_y": h_y, "positions": positions,
                "image_embeds": torch.randn(1024, generator=g)} for _ in range(4)]
    torch.manual_seed(0)
    projector = UMMProjector()
    task = UMMTask(projector, comfy_epsilon_denoiser(umm["model"].model))
    result = train(task, InMemoryDataset(samples), TrainConfig(steps=2, batch_size=2, checkpoint_every=0,
                                                               val_every=0, log_every=1), tmp_path / "run",
                   resume=False)
    assert len(result.records) >= 2
    name = "umm-trained-test.safetensors"
    save_projector(projector, str(models_root / "umm" / name), training_steps=2)
    try:
        loaded = load_projector(str(models_root / "umm" / name))
        assert torch.equal(loaded.mlp[0].weight, projector.mlp[0].weight)
        workflow = Path(__file__).resolve().parents[2] / "workflows" / "umm_subject.json"
        assert len(run_with_file(comfy_server, workflow, "UMMLoadProjector", "projector_name", name)) == 1
    finally:
        (models_root / "umm" / name).unlink()
