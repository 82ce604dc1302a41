#!/usr/bin/env python
"""Cost of one EMMA training step (cached features: ELLA + AGPR branch + UNet, forward + backward + AdamW)
against the bare UNet forward + backward of the same batch (frozen weights, gradient to the context: the
least any adapter trainer must pay), from one run.

    python scripts/bench_train.py                         # tiny SD15-detected ComfyUI UNet, 8x8 latents, CPU
    python scripts/bench_train.py --real --batch 8 --res 512 --device cuda   # SD1.5-size UNet/ELLA/EMMA
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def timed(fn, repeats, warmup, device):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", action="store_true", help="SD1.5-size UNet (860M, random weights)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--res", type=int, default=64, help="image side in pixels (latents are res/8)")
    p.add_argument("--text", type=int, default=128, help="T5 tokens per caption")
    p.add_argument("--modality", default="face", choices=["face", "style", "object"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--comfyui", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    from devtools.host import import_comfy

    if device.type == "cuda":
        import os

        os.environ.setdefault("EMMA_BENCH_GPU", "1")
    import_comfy(args.comfyui, builtin_nodes=False)
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from devtools.standins import TINY_SD15_UNET, reset_all_parameters
    from emma_core.adapters import DEFAULT_DIMS, Features
    from emma_core.ella import ELLA
    from emma_core.emma_module import EMMAConfig, EMMAModule
    from emma_core.train.objective import EMMATask

    config = dict(TINY_SD15_UNET)
    if args.real:
        config.update(num_res_blocks=[2] * 4, channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 0],
                      transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1)
    amp = torch.float16 if device.type == "cuda" else None
    unet = reset_all_parameters(UNetModel(**config)).to(device).requires_grad_(False)
    if amp is not None:
        unet = unet.half()
    ella = ELLA().to(device).requires_grad_(False)
    if amp is not None:
        ella = ella.half()
    kind = {"face": "face", "style": "style", "object": "clip_tokens"}[args.modality]
    module = EMMAModule(EMMAConfig(args.modality if args.modality != "object" else "object")).to(device)
    for block in module.branch:  # open the gates so the branch does real work (as after training)
        torch.nn.init.constant_(block.global_gate_attn, 0.5)
        torch.nn.init.constant_(block.global_gate_ffn, 0.5)
    b, side = args.batch, args.res // 8
    latents = torch.randn(b, 4, side, side, device=device)
    texts = [torch.randn(args.text, 2048) for _ in range(b)]
    feats = Features(kind, {k: torch.randn(b, *shape, device=device) for k, shape in DEFAULT_DIMS[kind].items()})
    batch = {"latents": latents, "text": texts, "features": feats, "index": torch.arange(b)}
    denoiser = lambda x, t, ctx: unet(x, t, context=ctx)  # noqa: E731
    task = EMMATask(module, ella, denoiser, empty_text=torch.randn(1, 2048), text_dropout=0.0, cond_dropout=0.0)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    t = torch.randint(0, 1000, (b,), device=device)
    ctx = torch.randn(b, 64, 768, device=device)

    def bare():
        c = ctx.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = unet(latents, t, context=c)
        out.float().square().mean().backward()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = task(batch, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()

    t_bare = timed(bare, args.repeats, args.warmup, device)
    t_step = timed(step, args.repeats, args.warmup, device)
    result = {"device": str(device), "real_size": args.real, "batch": b, "latent": [4, side, side],
              "text_tokens": args.text, "modality": args.modality,
              "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
              "trainable_params_M": round(sum(p.numel() for p in module.parameters()) / 1e6, 1),
              "bare_unet_fwd_bwd_s": round(t_bare, 4), "train_step_s": round(t_step, 4),
              "ratio": round(t_step / t_bare, 3), "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
