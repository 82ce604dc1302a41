"""Tiny random stand-ins for the real model files, in the REAL file formats.

No model hub is reachable from our machines, so tests exercise the real loading code (ComfyUI's stock
loaders and the pack's own) on files generated here: same key names, same layouts, same dtypes as the
released files, but tiny where the format allows it and random everywhere.

    from devtools.standins import ensure_standins
    names = ensure_standins(Path(".cache/test-models"))   # {"checkpoints": "emma-standin-...", ...}

    python -m devtools.standins <models_root>

Files are written only when missing (tmp file + os.replace, so an interrupted run never leaves a
truncated file behind) and are deterministic: every generator runs under a fixed seed.

The SD1.5 / ControlNet / TAESD builders import ComfyUI modules (comfy.*), so the ComfyUI tree must be
importable; `ensure_standins` does that through devtools.host.import_comfy.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from devtools.real_size import random_state_dict

SEED = 20240401

CHECKPOINT = "emma-standin-sd15-tiny.safetensors"
TAESD_ENCODER = "taesd_encoder.safetensors"
TAESD_DECODER = "taesd_decoder.safetensors"
CONTROLNET = "emma-standin-controlnet-sd15-tiny.safetensors"
T5 = "emma-standin-flan-t5-tiny.safetensors"
ELLA = "emma-standin-ella-sd1.5-tsc-t5xl.safetensors"
CLIP_VISION = "emma-standin-clip-vit-h.safetensors"
# EMMA modules: nobody has released any, so these stand in for what the trainer produces.
UMM_PROJECTOR = "emma-standin-umm-projector.safetensors"
EMU_LORA = "emma-standin-emu-lora.safetensors"
EMMA_MODULES = {"face": "emma-standin-face.safetensors", "object": "emma-standin-object.safetensors",
                "style": "emma-standin-style.safetensors"}

# A UNet ComfyUI's model detection calls SD15 (model_channels 320, context_dim 768, no linear proj_in,
# no label_emb, no temporal layers); depth and channel_mult are free, so one level and one res block.
TINY_SD15_UNET = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    num_res_blocks=[1],
    channel_mult=[1],
    transformer_depth=[1],
    transformer_depth_output=[1, 1],
    transformer_depth_middle=1,
    num_heads=8,
    num_head_channels=-1,
    context_dim=768,
    use_spatial_transformer=True,
    use_linear_in_transformer=False,
    legacy=False,
    adm_in_channels=None,
)

# The KL VAE of SD1.5 has a fixed architecture; only the weights are random.
SD15_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
    "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}

# SD1.5's text encoder, OpenAI CLIP ViT-L/14 text tower, at its real size (ComfyUI builds it from a fixed
# json config, so it cannot be shrunk and still load through CheckpointLoaderSimple).
CLIP_L_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)

# A T5 encoder as wide as flan-t5-xl (the ELLA connector reads 2048-d features) but 1 layer.
TINY_T5_CONFIG = dict(
    vocab_size=32128, d_model=2048, d_kv=64, num_heads=2, d_ff=256, num_layers=1,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
    relative_attention_max_distance=128, layer_norm_epsilon=1e-6, is_encoder_decoder=False,
    use_cache=False, tie_word_embeddings=False,
)


@contextlib.contextmanager
def seeded(seed: int):
    """Run torch's global-RNG initialisers deterministically without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def reset_all_parameters(module: torch.nn.Module) -> torch.nn.Module:
    """Initialise every layer with torch's own default init.

    ComfyUI's `comfy.ops.disable_weight_init` classes override reset_parameters with a no-op (real
    weights are loaded over them anyway), which would leave uninitialised memory in a random model.
    So call the reset_parameters of the first torch.nn base class in each module's MRO.
    """
    for sub in module.modules():
        for klass in type(sub).__mro__:
            if klass.__module__.startswith("torch.nn") and "reset_parameters" in klass.__dict__:
                klass.reset_parameters(sub)
                break
    return module


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # contiguous + clone: safetensors refuses shared or strided storage.
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


# --------------------------------------------------------------------------------------------- builders
def tiny_sd15_unet_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with seeded(seed):
        unet = reset_all_parameters(UNetModel(**TINY_SD15_UNET))
    return unet.state_dict()


def sd15_vae_state_dict(seed: int = SEED + 1) -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with seeded(seed):
        vae = reset_all_parameters(AutoencoderKL(ddconfig=SD15_VAE_DDCONFIG, embed_dim=4))
    return vae.state_dict()


def clip_l_state_dict(seed: int = SEED + 2) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))
    sd = random_state_dict(model, seed, embed_std=0.02)
    # Real SD1.5 files name it `text_model.*` (transformers < 5 layout); transformers 5 drops the prefix.
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
    # Real SD1.5 files carry this buffer (older transformers persisted it); recent transformers do not.
    sd["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return sd


def build_checkpoint(path: Path) -> None:
    """An SD1.5 single-file checkpoint: UNet + KL VAE + CLIP-L, fp16 like `*-pruned-emaonly-fp16`."""
    sd = {}
    sd.update(_prefixed("model.diffusion_model.", tiny_sd15_unet_state_dict()))
    sd.update(_prefixed("first_stage_model.", sd15_vae_state_dict()))
    sd.update(_prefixed("cond_stage_model.transformer.", clip_l_state_dict()))
    _save(_cast(sd, torch.float16), path)


def build_taesd(encoder_path: Path, decoder_path: Path, seed: int = SEED + 3) -> None:
    """TAESD in madebyollin's layout: two nn.Sequential state dicts ("1.conv.0.weight", ...), fp32."""
    from comfy.taesd.taesd import Decoder, Encoder

    with seeded(seed):
        enc = reset_all_parameters(Encoder(latent_channels=4))
        dec = reset_all_parameters(Decoder(latent_channels=4))
    _save(enc.state_dict(), encoder_path)
    _save(dec.state_dict(), decoder_path)


def build_controlnet(path: Path, seed: int = SEED + 4) -> None:
    """An SD1.5 ControlNet with the tiny UNet's config, keys as in lllyasviel's control_v11 files
    (no prefix: input_blocks.*, zero_convs.*, input_hint_block.*, middle_block(_out).*, time_embed.*)."""
    from comfy.cldm.cldm import ControlNet

    config = {k: v for k, v in TINY_SD15_UNET.items() if k != "out_channels"}
    with seeded(seed):
        net = reset_all_parameters(ControlNet(hint_channels=3, **config))
    _save(_cast(net.state_dict(), torch.float16), path)


def build_t5(path: Path, seed: int = SEED + 5) -> None:
    """A T5 encoder (transformers T5EncoderModel, HF key names), fp16 like the ELLA release used."""
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**TINY_T5_CONFIG))
    # embed_std 1.0: T5's own init of `shared` (its inputs are not rescaled by sqrt(d_model)).
    sd = random_state_dict(model, seed, embed_std=1.0)
    # The embedding is tied (shared.weight == encoder.embed_tokens.weight); HF writes it once.
    sd.pop("encoder.embed_tokens.weight", None)
    _save(_cast(sd, torch.float16), path, metadata={"format": "pt"})


def build_ella(path: Path, seed: int = SEED + 6) -> None:
    """The ELLA TSC connector with the official 93 names/shapes, fp16, from the pack's own module."""
    repo_root = str(Path(__file__).resolve().parents[1])
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    from emma_core.ella import ELLA as ELLAModule

    with seeded(seed):
        model = ELLAModule()
    sd = model.state_dict()
    if len(sd) != 93:
        raise RuntimeError(f"emma_core.ella.ELLA has {len(sd)} tensors; the released file has 93")
    _save(_cast(sd, torch.float16), path)


def build_clip_vision_h(path: Path, seed: int = SEED + 7) -> None:
    """CLIP ViT-H/14 in the layout of the file IPAdapter users have (transformers names, 'vision_model.*'
    + 'visual_projection.weight'), real size (ComfyUI picks the config by layer count), random, fp16."""
    import comfy.clip_vision

    config = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")
    with torch.device("meta"):
        model = comfy.clip_vision.ClipVisionModel(config)
    _save(_cast(random_state_dict(model.model, seed, embed_std=0.02), torch.float16), path)


def build_emma_module(path: Path, modality: str, seed: int) -> None:
    """A random EMMA module with non-zero global gates (an untrained one would be an exact no-op)."""
    repo_root = str(Path(__file__).resolve().parents[1])
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    from emma_core.emma_module import EMMAConfig, EMMAModule, save_module

    with seeded(seed):
        module = EMMAModule(EMMAConfig(modality=modality))
        for block in module.branch:
            torch.nn.init.constant_(block.global_gate_attn, 0.5)
            torch.nn.init.constant_(block.global_gate_ffn, 0.5)
    save_module(module, str(path), dtype=torch.float16)


def build_umm_projector(path: Path, seed: int = SEED + 20) -> None:
    repo_root = str(Path(__file__).resolve().parents[1])
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    from emma_core.umm import UMMProjector, save_projector

    with seeded(seed):
        save_projector(UMMProjector(), str(path))


def build_emu_lora(path: Path, seed: int = SEED + 21) -> None:
    """A LoRA for the tiny UNet in the kohya layout stock LoraLoader applies (what Emu Quality-Tune saves)."""
    repo_root = str(Path(__file__).resolve().parents[1])
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from emma_core.emu.lora import inject_lora

    with torch.device("meta"):
        unet = UNetModel(**TINY_SD15_UNET)
    unet = unet.to_empty(device="cpu")
    with seeded(seed):
        loras = inject_lora(unet, "transformer", rank=4, attach=False)
        for name, param in loras.named_parameters():
            torch.nn.init.normal_(param, std=0.02)
    _save(loras.to_kohya(torch.float16), path)


# ----------------------------------------------------------------------------------------- entry point
def _plan(models_root: Path) -> list[tuple[list[Path], Callable[[], None]]]:
    r = models_root
    return [
        ([r / "checkpoints" / CHECKPOINT], lambda: build_checkpoint(r / "checkpoints" / CHECKPOINT)),
        ([r / "vae_approx" / TAESD_ENCODER, r / "vae_approx" / TAESD_DECODER],
         lambda: build_taesd(r / "vae_approx" / TAESD_ENCODER, r / "vae_approx" / TAESD_DECODER)),
        ([r / "controlnet" / CONTROLNET], lambda: build_controlnet(r / "controlnet" / CONTROLNET)),
        ([r / "text_encoders" / T5], lambda: build_t5(r / "text_encoders" / T5)),
        ([r / "ella" / ELLA], lambda: build_ella(r / "ella" / ELLA)),
        ([r / "clip_vision" / CLIP_VISION], lambda: build_clip_vision_h(r / "clip_vision" / CLIP_VISION)),
        *[([r / "emma" / name], lambda m=modality, n=name, i=i: build_emma_module(r / "emma" / n, m, SEED + 10 + i))
          for i, (modality, name) in enumerate(EMMA_MODULES.items())],
        ([r / "umm" / UMM_PROJECTOR], lambda: build_umm_projector(r / "umm" / UMM_PROJECTOR)),
        ([r / "loras" / EMU_LORA], lambda: build_emu_lora(r / "loras" / EMU_LORA)),
        ([r / "insightface" / "models" / "antelopev2" / "glintr100.onnx"],
         lambda: __import__("devtools.face_packs", fromlist=["x"]).ensure_face_packs(r / "insightface")),
    ]


def standin_names() -> dict[str, object]:
    return {
        "checkpoints": CHECKPOINT,
        "vae_approx": {"encoder": TAESD_ENCODER, "decoder": TAESD_DECODER, "vae_name": "taesd"},
        "controlnet": CONTROLNET,
        "text_encoders": T5,
        "ella": ELLA,
        "clip_vision": CLIP_VISION,
        "emma": dict(EMMA_MODULES),
        "insightface": "antelopev2",
        "umm": UMM_PROJECTOR,
        "loras": EMU_LORA,
    }


def ensure_standins(models_root: Path, comfy_dir: Path | None = None, verbose: bool = False) -> dict:
    """Write the missing stand-in files under models_root; return the file names per model folder.

    `vae_approx` maps to a dict (encoder/decoder file names, and "taesd", the name VAELoader lists).
    """
    models_root = Path(models_root)
    plan = _plan(models_root)
    if any(not p.exists() for paths, _ in plan for p in paths):
        from devtools.host import import_comfy, provision  # comfy.* modules build the UNet-family models

        import_comfy(comfy_dir or provision(), builtin_nodes=False)  # only comfy.* modules are needed
        for paths, build in plan:
            if all(p.exists() for p in paths):
                continue
            t0 = time.perf_counter()
            build()
            if verbose:
                print(f"wrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - t0:.1f} s")
    return standin_names()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_root", type=Path)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    names = ensure_standins(args.models_root, verbose=True)
    print(names)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
