"""Real-size model shapes with random weights, shared by the benchmarks (a random weight costs what a trained
one costs), and the machine description every benchmark record carries."""
from __future__ import annotations

import datetime
import math
import os
import platform

import torch

# SD1.5's UNet, exactly as ComfyUI's model detection describes it (comfy/model_detection.py, SD15).
SD15_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], num_heads=8, context_dim=768,
    use_spatial_transformer=True, use_linear_in_transformer=False, legacy=False, adm_in_channels=None,
    use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False,
)

# google/flan-t5-xl's encoder (1.22 B parameters).
FLAN_T5_XL = dict(
    vocab_size=32128, d_model=2048, d_kv=64, num_heads=32, d_ff=5120, num_layers=24,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
)


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    info = dict(cpu=cpu, logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                memory_bytes=mem, python=platform.python_version(), torch=torch.__version__,
                platform=platform.platform(), device=str(device),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                load_average_at_start=list(os.getloadavg()))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def random_state_dict(module: torch.nn.Module, seed: int, embed_std: float = 1.0) -> dict[str, torch.Tensor]:
    """Random weights for every tensor of a (meta-device) module, tensor by tensor from one generator (fast:
    a model's own init of 100 M+ parameters takes seconds on 2 cores; deterministic): norms 1, biases 0,
    embeddings N(0, embed_std), other weights N(0, 1/fan_in) with fan_in = every axis but the first (so
    convolutions and linears keep activations O(1) through a deep stack); integer buffers 0."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, meta in module.state_dict(keep_vars=True).items():
        leaf = name.rsplit(".", 1)[-1]
        shape = meta.shape
        if not meta.is_floating_point():
            state[name] = torch.zeros(shape, dtype=meta.dtype)
        elif leaf == "bias":
            state[name] = torch.zeros(shape)
        elif ("norm" in name or "layer_norm" in name) and len(shape) == 1:
            state[name] = torch.ones(shape)
        elif "embed" in name or "shared" in name or "relative_attention_bias" in name:
            state[name] = torch.randn(shape, generator=gen).mul_(embed_std)
        elif len(shape) >= 2:
            state[name] = torch.randn(shape, generator=gen).mul_(math.prod(shape[1:]) ** -0.5)
        else:
            state[name] = torch.randn(shape, generator=gen).mul_(0.02)
    return state


def random_sd15_unet(seed: int = 1) -> torch.nn.Module:
    """ComfyUI's own UNetModel with SD1.5's configuration and fill_random_ weights, on the CPU."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**SD15_UNET)
    unet.load_state_dict(random_state_dict(unet, seed=seed), assign=True)
    return unet
