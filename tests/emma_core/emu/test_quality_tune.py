"""Emu quality-tuning with the tiny SD1.5 UNet in the real host: early stopping keeps the best step, and the
saved LoRA is applied by ComfyUI's stock LoraLoader exactly as it was trained."""
import math

import pytest
import torch

from devtools.datasets import InMemoryDataset
from emma_core.emu.lora import inject_lora, select_modules
from emma_core.emu.quality_tune import EmuRecipe, EmuTask, load_lora_file, quality_tune, save_lora
from emma_core.train import Subset, comfy_epsilon_denoiser

# Cross-attention k/v of the last transformer: cheap to train on 2 CPU cores, and enough to overfit.
TARGETS = r"output_blocks\.1\.1\.transformer_blocks\.0\.attn2\.(to_k|to_v)$"
LORA_NAME = "emu-test-overfit.safetensors"
PATIENCE = 3


@pytest.fixture(scope="module")
def sd15(comfy_inprocess, standins, one_thread):
    loader = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]()
    model, clip, vae = loader.load_checkpoint(standins["checkpoints"])[:3]
    return model, clip


def tiny_data():
    g = torch.Generator().manual_seed(0)
    context = torch.randn(77, 768, generator=g)
    latents = torch.randn(4, 4, 4, 4, generator=g)
    return InMemoryDataset([{"latents": latents[i], "text": context * (1 + 0.1 * i)} for i in range(4)])


@pytest.fixture(scope="module")
def overfit(sd15, tmp_path_factory):
    model, _clip = sd15
    data = tiny_data()
    recipe = EmuRecipe(rank=4, targets=TARGETS, micro_batch=2, effective_batch=2, lr=3e-3, warmup_steps=0,
                       val_every=1, patience=PATIENCE, max_steps=30, checkpoint_every=0, precision="fp32",
                       save_dtype="fp32")
    snapshots = {}
    result = quality_tune(model.model.diffusion_model, comfy_epsilon_denoiser(model.model), Subset(data, [0, 1]),
                          Subset(data, [2, 3]), recipe, tmp_path_factory.mktemp("run"),
                          on_validation=lambda step, val, tensors: snapshots.__setitem__(step, (val, tensors)))
    return result, snapshots, data, recipe


def test_recipe_defaults_are_emus():
    r = EmuRecipe()
    c = r.train_config()
    assert (r.noise_offset, r.effective_batch, c.steps, r.mode) == (0.1, 64, 15000, "lora")
    assert c.batch_size * c.grad_accum == 64 and c.early_stopping_patience > 0 and c.val_every > 0
    assert EmuRecipe(micro_batch=3).grad_accum() == 22  # ceil(64 / 3): at least 64


def test_early_stopping_stops_at_the_best_validation_step_and_saves_it(overfit):
    result, snapshots, _data, _recipe = overfit
    vals = {r["step"]: r["val_loss"] for r in result.records if r.get("val_loss") is not None}
    best = min(vals, key=vals.get)
    assert result.stopped_early
    assert result.best_step == best == result.saved_step
    assert result.step == best + PATIENCE  # patience validations without improvement, one per step
    assert min(vals) < best < max(vals)   # built to overfit: the loss falls first, then rises
    assert vals[result.step] > vals[best]
    assert math.isclose(result.best_val_loss, vals[best])
    saved = result.lora
    assert set(saved) == set(snapshots[best][1])
    for key, tensor in saved.items():
        assert torch.equal(tensor, snapshots[best][1][key]), key
    assert any(not torch.equal(saved[k], snapshots[result.step][1][k]) for k in saved)


def test_saved_lora_reproduces_the_best_validation_loss(overfit, sd15):
    result, _snapshots, data, recipe = overfit
    model, _clip = sd15
    unet = model.model.diffusion_model
    assert not unet._forward_hooks and not any(m._forward_hooks for m in unet.modules())  # left as it was
    loras = inject_lora(unet, TARGETS, rank=4)
    try:
        loras.load_kohya(result.lora)
        task = EmuTask(loras, comfy_epsilon_denoiser(model.model), noise_offset=recipe.noise_offset)
        val = Subset(data, [2, 3])
        batch = task.collate([val.sample(i) for i in range(len(val))])
        assert math.isclose(float(task.validation_losses(batch).mean()), result.best_val_loss, rel_tol=1e-6)
    finally:
        loras.detach()


def test_stock_lora_loader_applies_the_saved_lora(overfit, sd15, comfy_inprocess):
    result, _snapshots, _data, _recipe = overfit
    model, clip = sd15
    path = comfy_inprocess.models_root / "loras" / LORA_NAME
    save_lora(path, result.lora, result.metadata)
    try:
        tensors, meta = load_lora_file(path)
        assert meta["ss_network_module"] == "networks.lora" and int(meta["emu_step"]) == result.best_step
        assert all(k.startswith("lora_unet_output_blocks_1_1_transformer_blocks_0_attn2_to_") for k in tensors)
        loader = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["LoraLoader"]()
        g = torch.Generator().manual_seed(5)
        x, sigma, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([3.0]), torch.randn(1, 77, 768, generator=g)
        import comfy.model_management as mm

        def output(patched):
            mm.load_models_gpu([patched])
            with torch.no_grad():
                return patched.model.apply_model(x, sigma, c_crossattn=ctx).clone()

        plain = output(model)
        with_lora = output(loader.load_lora(model, clip, LORA_NAME, 1.0, 1.0)[0])
        zero = output(loader.load_lora(model, clip, LORA_NAME, 0.0, 0.0)[0])
        assert torch.equal(zero, plain)
        assert (with_lora - plain).abs().max() > 1e-4
        # what LoraLoader applies is exactly what was trained through the hooks
        mm.load_models_gpu([model])
        loras = inject_lora(model.model.diffusion_model, TARGETS, rank=4)
        try:
            loras.load_kohya(tensors)
            with torch.no_grad():
                hooked = model.model.apply_model(x, sigma, c_crossattn=ctx)
        finally:
            loras.detach()
        assert torch.allclose(hooked, with_lora, atol=1e-5, rtol=1e-4)
        assert torch.equal(output(model), plain)  # the base model is untouched
    finally:
        path.unlink(missing_ok=True)


def test_lora_conv_layout_matches_comfy_math():
    """A 3x3 conv LoRA (LoCon layout): the hooked output equals the base conv with ComfyUI's weight delta."""
    torch.manual_seed(0)
    root = torch.nn.Sequential(torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.Linear(8, 5))
    loras = inject_lora(root, lambda name, m: True, rank=3, alpha=1.5)
    for layer in loras.layers.values():
        torch.nn.init.normal_(layer.up.weight)
    sd = loras.to_kohya()
    assert sd["lora_unet_0.lora_down.weight"].shape == (3, 6, 3, 3)
    assert sd["lora_unet_0.lora_up.weight"].shape == (8, 3, 1, 1) and float(sd["lora_unet_0.alpha"]) == 1.5
    x = torch.randn(2, 6, 7, 7)
    hooked = root[0](x)
    loras.detach()
    up, down = sd["lora_unet_0.lora_up.weight"], sd["lora_unet_0.lora_down.weight"]
    delta = (1.5 / 3) * (up.flatten(1) @ down.flatten(1)).reshape(root[0].weight.shape)  # comfy/weight_adapter/lora.py
    expected = torch.nn.functional.conv2d(x, root[0].weight + delta, root[0].bias, padding=1)
    assert torch.allclose(hooked, expected, atol=1e-5)
    assert not root[0]._forward_hooks  # detached


def test_presets_select_the_kohya_modules():
    names = [n for n in ("input_blocks.1.1.proj_in", "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                         "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj", "middle_block.0.in_layers.2")]
    root = torch.nn.Module()
    for n in names:
        parent = root
        *path, leaf = n.split(".")
        for p in path:
            if not hasattr(parent, p):
                parent.add_module(p, torch.nn.Module())
            parent = getattr(parent, p)
        parent.add_module(leaf, torch.nn.Linear(2, 2))
    assert select_modules(root, "attention") == [names[1]]
    assert select_modules(root, "transformer") == names[:3]
    assert select_modules(root, "all") == names
