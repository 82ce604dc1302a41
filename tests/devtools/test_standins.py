"""The stand-in models load through ComfyUI's stock loaders and match the real files' formats."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from devtools import standins as S


def _header(path) -> dict:
    """The safetensors JSON header: name -> {dtype, shape, data_offsets} (no tensor is read)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def test_checkpoint_is_detected_as_sd15_with_model_clip_and_vae(comfy_stock, standins):
    import comfy.model_base
    import comfy.supported_models

    with torch.inference_mode():
        model, clip, vae = comfy_stock.nodes.CheckpointLoaderSimple().load_checkpoint(standins["checkpoints"])[:3]
    assert type(model.model) is comfy.model_base.BaseModel
    assert type(model.model.model_config) is comfy.supported_models.SD15
    unet_config = model.model.model_config.unet_config
    assert unet_config["model_channels"] == 320 and unet_config["context_dim"] == 768
    assert unet_config["channel_mult"] == [1] and unet_config["num_res_blocks"] == [1]
    assert clip is not None and vae is not None
    assert type(vae.first_stage_model).__name__ == "AutoencoderKL"


def test_checkpoint_keys_are_the_sd15_single_file_layout(models_root, standins):
    header = _header(models_root / "checkpoints" / standins["checkpoints"])
    prefixes = {k.split(".")[0] for k in header}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert header["model.diffusion_model.input_blocks.0.0.weight"]["shape"] == [320, 4, 3, 3]
    assert header["model.diffusion_model.out.2.weight"]["shape"] == [4, 320, 3, 3]
    attn2_k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert header[attn2_k]["shape"] == [320, 768]
    assert header["first_stage_model.decoder.conv_out.weight"]["shape"] == [3, 128, 3, 3]
    tok = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    assert header[tok]["shape"] == [49408, 768]
    assert sum(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.") and k.endswith("q_proj.weight")
               for k in header) == 12
    assert {v["dtype"] for k, v in header.items() if not k.endswith("position_ids")} == {"F16"}


def test_comfyui_loads_a_checkpoint_without_clip_keys(comfy_stock, models_root, standins):
    """Recorded behaviour of 0.3.75: no CLIP weights -> CLIP is None (a warning), MODEL and VAE load."""
    import comfy.sd
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(models_root / "checkpoints" / standins["checkpoints"]))
    sd = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    model, clip, vae, _ = comfy.sd.load_state_dict_guess_config(sd)
    assert model is not None and vae is not None
    assert clip is None


def test_taesd_loads_through_vaeloader_and_decodes(comfy_stock, standins):
    import comfy.taesd.taesd

    assert "taesd" in comfy_stock.nodes.VAELoader.vae_list(comfy_stock.nodes.VAELoader)
    with torch.inference_mode():
        (vae,) = comfy_stock.nodes.VAELoader().load_vae(standins["vae_approx"]["vae_name"])
        image = vae.decode(torch.randn(1, 4, 8, 8))
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    assert tuple(image.shape) == (1, 64, 64, 3)


def test_taesd_files_have_madebyollin_layout(models_root):
    enc = _header(models_root / "vae_approx" / S.TAESD_ENCODER)
    dec = _header(models_root / "vae_approx" / S.TAESD_DECODER)
    assert enc["0.weight"]["shape"] == [64, 3, 3, 3] and enc["14.weight"]["shape"] == [4, 64, 3, 3]
    assert dec["1.weight"]["shape"] == [64, 4, 3, 3] and "3.conv.0.weight" in dec
    assert {v["dtype"] for v in [*enc.values(), *dec.values()]} == {"F32"}


def test_controlnet_loads_through_controlnetloader_without_missing_keys(comfy_stock, models_root, standins):
    import comfy.cldm.cldm
    import comfy.controlnet

    with torch.inference_mode():
        (control,) = comfy_stock.nodes.ControlNetLoader().load_controlnet(standins["controlnet"])
    assert isinstance(control, comfy.controlnet.ControlNet)
    assert isinstance(control.control_model, comfy.cldm.cldm.ControlNet)
    header = _header(models_root / "controlnet" / standins["controlnet"])
    assert set(header) == set(control.control_model.state_dict())
    for key in ("input_hint_block.0.weight", "zero_convs.0.0.weight", "middle_block_out.0.weight",
                "time_embed.0.weight", "input_blocks.0.0.weight"):
        assert key in header, key
    assert header["input_hint_block.0.weight"]["shape"][1] == 3


def test_t5_standin_loads_strictly_into_transformers(models_root, standins):
    from safetensors.torch import load_file
    from transformers import T5Config, T5EncoderModel

    sd = load_file(str(models_root / "text_encoders" / standins["text_encoders"]))
    assert {v.dtype for v in sd.values()} == {torch.float16}
    assert sd["shared.weight"].shape == (32128, 2048)
    assert sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape == (128, 2048)
    assert sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape == (32, 2)
    assert sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape == (256, 2048)
    model = T5EncoderModel(T5Config(**S.TINY_T5_CONFIG))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected
    assert set(missing) <= {"encoder.embed_tokens.weight"}  # tied to shared.weight
    with torch.inference_mode():
        out = model.float()(input_ids=torch.tensor([[3, 9, 1712, 1]])).last_hidden_state
    assert out.shape == (1, 4, 2048) and torch.isfinite(out).all()


# The released ella-sd1.5-tsc-t5xl.safetensors (docs/ella.md), independent of emma_core.
ELLA_FIXED = {
    "time_embedding.linear_1.weight": [768, 320], "time_embedding.linear_1.bias": [768],
    "time_embedding.linear_2.weight": [768, 768], "time_embedding.linear_2.bias": [768],
    "connector.latents": [64, 768],
    "connector.time_aware_linear.weight": [768, 768], "connector.time_aware_linear.bias": [768],
    "connector.proj_in.weight": [768, 2048], "connector.proj_in.bias": [768],
}
ELLA_BLOCK = {
    "attn.in_proj_weight": [2304, 768], "attn.in_proj_bias": [2304],
    "attn.out_proj.weight": [768, 768], "attn.out_proj.bias": [768],
    "mlp.c_fc.weight": [3072, 768], "mlp.c_fc.bias": [3072],
    "mlp.c_proj.weight": [768, 3072], "mlp.c_proj.bias": [768],
    "ln_1.linear.weight": [1536, 768], "ln_1.linear.bias": [1536],
    "ln_2.linear.weight": [1536, 768], "ln_2.linear.bias": [1536],
    "ln_ff.linear.weight": [1536, 768], "ln_ff.linear.bias": [1536],
}


def test_ella_standin_has_the_official_93_tensors(models_root, standins):
    header = _header(models_root / "ella" / standins["ella"])
    expected = dict(ELLA_FIXED)
    for i in range(6):
        expected.update({f"connector.perceiver_blocks.{i}.{k}": v for k, v in ELLA_BLOCK.items()})
    assert len(expected) == 93
    assert {k: v["shape"] for k, v in header.items()} == expected
    assert {v["dtype"] for v in header.values()} == {"F16"}
    params = sum(torch.Size(s).numel() for s in expected.values())
    assert params == 66_820_608


def test_generation_is_deterministic(comfy_stock, models_root, tmp_path):
    S.build_taesd(tmp_path / "enc.safetensors", tmp_path / "dec.safetensors")
    assert (tmp_path / "enc.safetensors").read_bytes() == (models_root / "vae_approx" / S.TAESD_ENCODER).read_bytes()
    S.build_controlnet(tmp_path / "cn.safetensors")
    assert (tmp_path / "cn.safetensors").read_bytes() == (models_root / "controlnet" / S.CONTROLNET).read_bytes()


def test_inprocess_graph_run_writes_an_image(comfy_stock):
    graph = {
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["latent", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "inproc"}},
    }
    result = comfy_stock.run(graph)
    (image,) = result["outputs"]["save"]["images"]
    assert (result["output_dir"] / image["subfolder"] / image["filename"]).is_file()
    assert any(kind == "execution_success" for kind, _ in result["status_messages"])


def test_inprocess_graph_run_raises_on_invalid_graph(comfy_stock):
    from devtools.host import ComfyPromptError

    graph = {"save": {"class_type": "SaveImage", "inputs": {"images": ["missing", 0], "filename_prefix": "x"}}}
    with pytest.raises(ComfyPromptError):
        comfy_stock.run(graph)
