"""The world's IP-Adapter peer (devtools/world/ipadapter.py, ipadapter_train.py) on ComfyUI's real UNet class at
the stand-in's tiny SD1.5 size (one level; cross-attention in input block 1, the middle and output blocks 0
and 1), through ComfyUI's own patch mechanism, apply_model and KSampler."""
import zlib

import pytest
import torch

from devtools.world import features as world_features
from devtools.world import scene as world
from devtools.world import ipadapter
from devtools.world.ipadapter import (ImageAdapter, NODE_CLASS_MAPPINGS, attn2_layers, layer_name, load_adapter,
                                      patch_model, save_adapter)
from devtools.world.ipadapter_train import AdapterTask, parameter_counts, train_adapter
from emma_core.ella import ELLA, ELLAConfig
from emma_core.state_dict import WeightsFileError
from emma_core.train.loop import TrainConfig, evaluate, train
from emma_core.train.objective import EMMATask

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 32            # pictures; 4 x 4 latents
TEXT_DIM = 64        # the toy text features the tiny connector reads
KEYS = [("input", 1, 0), ("middle", 0, 0), ("output", 0, 0), ("output", 1, 0)]


@pytest.fixture(scope="module")
def sd15(comfy_stock):
    """ComfyUI's ModelPatcher of the stand-in tiny SD1.5 UNet (ComfyUI's UNetModel; detected as SD15)."""
    import comfy.sd

    from devtools.standins import tiny_sd15_unet_state_dict

    return comfy.sd.load_diffusion_model_state_dict(tiny_sd15_unet_state_dict())


def references(*specs):
    """Object references (shape, colour, seed) -> the world's object features, one row each."""
    return world_features.object_features([world.object_reference(s, c, seed, SIZE) for s, c, seed in specs])


def dims():
    return {k: tuple(v.shape[1:]) for k, v in references(("circle", "red", 0)).tensors.items()}


def inputs(rows: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 4, SIZE // 8, SIZE // 8, generator=g), torch.full((rows,), 2.0),
            torch.randn(rows, 8, 768, generator=g))


def run(patcher, x, sigma, context, chunks=(0,)):
    """apply_model as ComfyUI's sampler calls it for one batch of chunks (cond_or_uncond)."""
    options = dict(patcher.model_options["transformer_options"], cond_or_uncond=list(chunks))
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)


@pytest.fixture(scope="module")
def adapter(sd15):
    torch.manual_seed(0)
    return ImageAdapter.for_unet(sd15, dims())


def test_one_ip_projection_per_cross_attention_initialised_from_its_keys_and_values(sd15, adapter):
    found = attn2_layers(sd15)
    assert [key for key, _ in found] == KEYS
    for key, attn in found:
        layer = adapter.layers[layer_name(key)]
        assert torch.equal(layer.to_k_ip.weight, attn.to_k.weight)
        assert torch.equal(layer.to_v_ip.weight, attn.to_v.weight)
    # the whole-picture token and 16 cells (hidden), and the embedding
    assert adapter.tokens(references(("circle", "red", 0))).shape == (1, 18, 768)
    glob = ImageAdapter.for_unet(sd15, dims(), projection="global")
    assert glob.tokens(references(("circle", "red", 0), ("cross", "blue", 1))).shape == (2, 4, 768)
    with pytest.raises(ValueError, match="clip_tokens"):
        adapter.tokens(world_features.style_features([world.background_patch("dots", 0, SIZE)]))


def test_scale_zero_or_zero_projections_leave_the_unet_exactly_unchanged(sd15, adapter):
    x, sigma, context = inputs(2)
    base = run(sd15, x, sigma, context)
    refs = references(("circle", "red", 0), ("square", "blue", 1))
    assert torch.equal(run(patch_model(sd15, adapter, refs, 0.0), x, sigma, context), base)
    zero = ImageAdapter.for_unet(sd15, dims())
    with torch.no_grad():
        for layer in zero.layers.values():
            layer.to_k_ip.weight.zero_(), layer.to_v_ip.weight.zero_()
    assert torch.equal(run(patch_model(sd15, zero, refs, 1.0), x, sigma, context), base)
    # every layer's patch acts: one layer's image attention alone moves the output
    for name in zero.layers:
        one = ImageAdapter.for_unet(sd15, dims())
        with torch.no_grad():
            for other, layer in one.layers.items():
                if other != name:
                    layer.to_v_ip.weight.zero_()
        assert not torch.allclose(run(patch_model(sd15, one, refs, 1.0), x, sigma, context), base, atol=1e-4), name


def test_the_output_changes_with_the_scale_and_with_the_reference(sd15, adapter):
    x, sigma, context = inputs(1)
    base = run(sd15, x, sigma, context)
    red, blue = references(("circle", "red", 0)), references(("circle", "blue", 0))
    out = {(name, s): run(patch_model(sd15, adapter, ref, s), x, sigma, context)
           for name, ref in (("red", red), ("blue", blue)) for s in (0.5, 1.0)}
    for value in out.values():
        assert (value - base).abs().max() > 1e-3
    assert (out["red", 1.0] - out["blue", 1.0]).abs().max() > 1e-4
    assert (out["red", 1.0] - out["red", 0.5]).abs().max() > 1e-4


def test_the_patch_goes_on_a_clone_and_leaves_the_model_untouched(sd15, adapter):
    x, sigma, context = inputs(1)
    before = run(sd15, x, sigma, context)
    options = repr(sd15.model_options)
    patched = patch_model(sd15, adapter, references(("circle", "red", 0)), 1.0)
    assert patched is not sd15 and patched.model is sd15.model
    assert repr(sd15.model_options) == options and "patches_replace" not in sd15.model_options["transformer_options"]
    assert sorted(patched.model_options["transformer_options"]["patches_replace"]["attn2"]) == sorted(KEYS)
    assert torch.equal(run(sd15, x, sigma, context), before)
    clone = patched.clone()  # ComfyUI deep-copies model_options: the patches are shared, not copied
    assert clone.model_options["transformer_options"]["patches_replace"]["attn2"][KEYS[0]] is \
        patched.model_options["transformer_options"]["patches_replace"]["attn2"][KEYS[0]]
    with pytest.raises(ValueError, match="already has an attn2 replace patch"):
        patch_model(patched, adapter, references(("circle", "red", 0)), 1.0)


def test_negative_chunks_get_no_image_tokens_and_each_picture_its_own_reference(sd15, adapter):
    """Two pictures with a reference each; ComfyUI's CFG batch [negative; positive] (and the other order)."""
    x, sigma, context = inputs(2)
    negative = inputs(2, seed=1)[2]
    refs = references(("circle", "red", 0), ("cross", "blue", 1))
    patched = patch_model(sd15, adapter, refs, 1.0)
    for chunks in ((1, 0), (0, 1)):
        ctx = torch.cat([negative, context] if chunks == (1, 0) else [context, negative])
        both = run(patched, torch.cat([x, x]), torch.cat([sigma, sigma]), ctx, chunks)
        plain = run(sd15, torch.cat([x, x]), torch.cat([sigma, sigma]), ctx, chunks)
        neg, pos = (slice(0, 2), slice(2, 4)) if chunks == (1, 0) else (slice(2, 4), slice(0, 2))
        assert torch.equal(both[neg], plain[neg])                           # the negative: the plain UNet
        assert torch.allclose(both[pos], run(patched, x, sigma, context), atol=1e-5)
        assert (both[pos] - plain[pos]).abs().max() > 1e-3
    for row, spec in enumerate((("circle", "red", 0), ("cross", "blue", 1))):
        alone = run(patch_model(sd15, adapter, references(spec), 1.0), x[row:row + 1], sigma[:1], context[row:row + 1])
        assert torch.allclose(run(patched, x, sigma, context)[row:row + 1], alone, atol=1e-5)
    with pytest.raises(ValueError, match="3 reference rows for a latent batch of 2"):
        run(patch_model(sd15, adapter, references(*[("circle", "red", i) for i in range(3)]), 1.0), x, sigma, context)


def test_ksampler_samples_the_patched_clone(comfy_stock, sd15, adapter, monkeypatch):
    """Through ComfyUI's KSampler with CFG (positive and negative reach the patch as chunks of one batch):
    scale 0 gives the plain model's latents exactly, scale 1 other ones."""
    seen = []
    call = ipadapter._IPAttention.__call__

    def recording(self, q, k, v, extra):
        seen.append(tuple(extra["cond_or_uncond"]))
        return call(self, q, k, v, extra)

    monkeypatch.setattr(ipadapter._IPAttention, "__call__", recording)
    g = torch.Generator().manual_seed(3)
    positive = [[torch.randn(1, 8, 768, generator=g), {}]]
    negative = [[torch.randn(1, 8, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(2, 4, SIZE // 8, SIZE // 8)}

    def sample(model):
        return comfy_stock.nodes.common_ksampler(model, 7, 3, 5.0, "dpmpp_2m", "karras", positive, negative,
                                                 latent)[0]["samples"]

    refs = references(("circle", "red", 0), ("square", "green", 1))
    plain = sample(sd15)
    assert torch.equal(sample(patch_model(sd15, adapter, refs, 0.0)), plain)
    steered = sample(patch_model(sd15, adapter, refs, 1.0))
    assert (steered - plain).abs().max() > 1e-3
    assert seen and all(sorted(chunks) == [0, 1] for chunks in seen)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A tiny object dataset of world pictures, cached by the trainer's own cache builder: latents = the cells'
    mean colour, toy text features, the reference features files (world-cells-v1) as the world writes them."""
    from devtools.world.modules import write_dataset
    from emma_core.train.cache import CacheEncoders, CachedDataset
    from emma_core.train.emma import prepare_cache

    root = tmp_path_factory.mktemp("ipadapter-data")
    folder = write_dataset(root / "object-dataset", "object", 8, SIZE)

    def encode_text(text):
        words = text.split() or [""]
        return torch.stack([torch.randn(TEXT_DIM, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
                            for w in words])

    def encode_image(image):
        cells = torch.nn.functional.avg_pool2d(image.permute(0, 3, 1, 2), 8)
        return torch.cat([(cells - 0.5) * 2, torch.zeros_like(cells[:, :1])], 1)

    encoders = CacheEncoders(encode_text, encode_image, None, {"test": "ipadapter"}, resolution=SIZE,
                             feature_kind="clip_tokens", encoder_name="world-cells")
    report, names = prepare_cache(folder, root / "cache", encoders)
    return CachedDataset(report.folder, names), report.folder, names


@pytest.fixture(scope="module")
def ella():
    torch.manual_seed(1)
    return ELLA(ELLAConfig(time_channels=320, time_embed_dim=768, width=768, layers=1, heads=8, num_latents=8,
                           input_dim=TEXT_DIM))


def test_gradients_reach_only_the_adapter(sd15, cached, ella):
    data = cached[0]
    adapter = ImageAdapter.for_unet(sd15, dims())
    task = AdapterTask(adapter, ella, sd15, empty_text=data.empty_text, cond_dropout=0.0, text_dropout=0.0)
    assert set(dict(task.named_children())) == {"trainable"}
    assert (AdapterTask.draw, AdapterTask.validation_draw, AdapterTask.loss_weights) == \
        (EMMATask.draw, EMMATask.validation_draw, EMMATask.loss_weights)  # the object module's draws
    batch = task.collate([data.sample(i) for i in range(4)])
    task(batch, torch.Generator().manual_seed(0)).backward()
    assert all(not p.requires_grad and p.grad is None for p in sd15.model.parameters())
    assert all(p.grad is None for p in ella.parameters())
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_training_steps_through_the_loop_lower_the_loss(sd15, cached, ella, tmp_path):
    data = cached[0]
    torch.manual_seed(0)
    adapter = ImageAdapter.for_unet(sd15, dims())
    task = AdapterTask(adapter, ella, sd15, empty_text=data.empty_text)
    before = evaluate(task, data, 8)
    train(task, data, TrainConfig(steps=20, batch_size=4, lr=1e-3, warmup_iters=0, checkpoint_every=0), tmp_path,
          resume=False)
    after = evaluate(task, data, 8)
    print(f"loss {before:.4f} -> {after:.4f}")
    assert after < 0.95 * before


def test_train_adapter_writes_the_adapter_and_save_load_is_exact(sd15, cached, ella, tmp_path):
    _data, folder, names = cached
    out = train_adapter(folder, names, model_patcher=sd15, ella=ella, out_path=tmp_path / "ip.safetensors",
                        run_dir=tmp_path / "run", config=TrainConfig(steps=2, batch_size=4, checkpoint_every=0),
                        val_fraction=0.0, save_dtype=torch.float32)
    loaded = load_adapter(out.adapter_path)
    assert loaded.metadata() == out.adapter.metadata() and loaded.training_steps == 2
    assert loaded.feature_encoder == world_features.OBJECT_ENCODER  # the features files name it
    trained = out.adapter.state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    glob = ImageAdapter.for_unet(sd15, dims(), projection="global", scale=0.7)
    save_adapter(glob, tmp_path / "global.safetensors")
    again = load_adapter(tmp_path / "global.safetensors")
    assert again.metadata() == glob.metadata() and again.scale == 0.7 and again.num_tokens == 4
    assert all(torch.equal(v, glob.state_dict()[k]) for k, v in again.state_dict().items())
    x, sigma, context = inputs(1)
    refs = references(("triangle", "cyan", 2))
    assert torch.equal(run(patch_model(sd15, again, refs), x, sigma, context),
                       run(patch_model(sd15, glob, refs), x, sigma, context))
    world_features.write_features("object", [world.object_reference("circle", "red", 0, SIZE)],
                                  tmp_path / "f.safetensors")
    with pytest.raises(WeightsFileError, match="not a world IP-Adapter file"):
        load_adapter(tmp_path / "f.safetensors")
    node = NODE_CLASS_MAPPINGS["EMMAWorldIPAdapter"]()
    (patched,) = node.apply(sd15, str(tmp_path / "global.safetensors"), refs, 1.0)
    assert torch.equal(run(patched, x, sigma, context), run(patch_model(sd15, glob, refs, 1.0), x, sigma, context))


def test_parameter_counts_at_the_full_schedule(comfy_stock):
    from devtools.world.build import SCHEDULES

    s = SCHEDULES["full"]
    counts = parameter_counts(s.unet, s.ella_layers, s.ella_latents, s.size)
    print(counts)
    # two-level UNet: attn2 in input block 2, the middle, output blocks 2 and 3, each 768 -> 320 for k and v
    assert counts["adapter_layers"] == 4 and counts["adapter_kv"] == 4 * 2 * 768 * 320
    assert counts["adapter_tokens"] == (s.size // 8) ** 2 + 2  # a token per 8 px cell, the whole picture, embeds
    assert counts["adapter_projection"] == 2 * (6 * 768 + 768) + 2 * 768
    assert counts["adapter"] == counts["adapter_kv"] + counts["adapter_projection"]
    assert counts["emma_object_module"] > 0


def test_the_node_takes_the_features_the_packs_load_features_node_gives(comfy_inprocess, add_model_folder, sd15,
                                                                        adapter, tmp_path):
    """ComfyUI imports the pack under its folder's name, so Load EMMA Features hands over the pack's own Features
    class, not the one devtools imports: the evaluation's node must take it (it once refused it)."""
    folder = tmp_path / "features"
    world_features.write_features("object", [world.object_reference("circle", "red", 0, SIZE)],
                                  folder / "red.safetensors")
    add_model_folder("emma_features", str(folder))
    load = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["EMMALoadFeatures"]
    from_the_pack = load.execute("red.safetensors")[0]
    assert type(from_the_pack) is not world_features.Features  # what the graph really hands over
    save_adapter(adapter, tmp_path / "ip.safetensors")
    x, sigma, context = inputs(1)
    patched = NODE_CLASS_MAPPINGS["EMMAWorldIPAdapter"]().apply(sd15, str(tmp_path / "ip.safetensors"),
                                                                from_the_pack, 1.0)[0]
    expected = patch_model(sd15, load_adapter(tmp_path / "ip.safetensors"), references(("circle", "red", 0)), 1.0)
    out = run(patched, x, sigma, context)
    assert torch.equal(out, run(expected, x, sigma, context))
    assert (out - run(sd15, x, sigma, context)).abs().max() > 1e-3
