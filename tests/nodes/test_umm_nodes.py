"""UMM-Diffusion in the real host: pseudo-word replacement and the mixed guidance."""
import pytest
import torch

S, W = 6.0, 0.4
PROMPT = "a photo of a dog playing on the beach at sunset"


@pytest.fixture(scope="module")
def umm(comfy_inprocess, standins):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    model, clip, _vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
    projector = m["UMMLoadProjector"].execute(projector_name=standins["umm"]).result[0]
    vision_output = {"image_embeds": torch.randn(1, 1024, generator=torch.Generator().manual_seed(3))}
    h_u, h_y = m["UMMSubjectEncode"].execute(clip=clip, text=PROMPT, subject_word="dog",
                                             clip_vision_output=vision_output, projector=projector).result
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
        umm["m"]["UMMSubjectEncode"].execute(clip=umm["clip"], text=PROMPT, subject_word="cat",
                                             clip_vision_output=umm["vision_output"], projector=umm["projector"])


def test_projector_refuses_embeddings_of_another_width(umm):
    with pytest.raises(ValueError, match=r"clip-vit-h-14 embeddings of width 1024; got width 768"):
        umm["m"]["UMMSubjectEncode"].execute(clip=umm["clip"], text=PROMPT, subject_word="dog",
                                             clip_vision_output={"image_embeds": torch.zeros(1, 768)},
                                             projector=umm["projector"])


def run(umm, guider, steps, seed=11):
    m = umm["m"]
    noise = m["RandomNoise"].execute(noise_seed=seed).result[0]
    sampler = m["KSamplerSelect"].execute(sampler_name="euler").result[0]
    sigmas = m["BasicScheduler"].execute(model=umm["model"], scheduler="normal", steps=steps, denoise=1.0).result[0]
    latent = m["EmptyLatentImage"]().generate(64, 64, 1)[0]
    with torch.inference_mode():
        return m["SamplerCustomAdvanced"].execute(noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                                                  latent_image=latent).result[0]["samples"]


def umm_guider(umm, s, w):
    return umm["m"]["UMMGuider"].execute(model=umm["model"], h_u=umm["h_u"], h_y=umm["h_y"],
                                         negative=umm["negative"], s=s, w=w).result[0]


def test_guider_equals_the_formula_computed_from_separate_predictions(umm):
    """The node returns ComfyUI's own dual-CFG guider; this checks that it computes UMM's formula, from three
    separate single-condition predictions."""
    m = umm["m"]
    # one euler step from sigma_max to 0 returns the guider's prediction itself
    mixed = run(umm, umm_guider(umm, S, W), 1)
    alone = {name: run(umm, m["CFGGuider"].execute(model=umm["model"], positive=cond, negative=umm["negative"],
                                                   cfg=1.0).result[0], 1)
             for name, cond in (("u", umm["h_u"]), ("y", umm["h_y"]), ("empty", umm["negative"]))}
    expected = alone["empty"] + S * ((1 - W) * (alone["y"] - alone["empty"]) + W * (alone["u"] - alone["empty"]))
    # separate (unbatched) model calls differ from a batched one by float rounding, amplified by s
    tol = 1e-4 * float(expected.abs().max())
    assert float((S * W * (alone["u"] - alone["y"])).abs().max()) > 20 * tol  # the subject term is not noise
    assert float((mixed - expected).abs().max()) < tol


@pytest.mark.parametrize("s, w", [(float("nan"), W), (S, float("inf"))])
def test_a_nan_or_infinite_scale_is_an_error_not_a_black_picture(umm, s, w):
    name, value = ("s", s) if s != S else ("w", w)
    with pytest.raises(ValueError, match=rf"^\[UMM Guider\] {name} is {value}: give a number from"):
        umm_guider(umm, s, w)


def test_projector_trained_on_the_shared_trainer_drives_the_workflow(umm, comfy_server, models_root, tmp_path):
    """Real dimensions (ViT-H 1024 -> CLIP-L 768), the tiny SD1.5 UNet as the frozen denoiser, a few steps of
    the shared loop; the saved file loads and runs the shipped UMM workflow on the server."""
    from pathlib import Path

    from devtools.run_workflow import run_with_file
    from devtools.datasets import InMemoryDataset
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
