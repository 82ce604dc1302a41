#!/usr/bin/env python
"""Cost of one EMMA training step against the bare UNet forward + backward of the same batch, from one run.

The training step is what the trainer does per batch from the feature cache: ELLA (frozen) with the EMMA
module's adapter and AGPR branch, the frozen UNet, backward to the trainable module, gradient clipping and
AdamW. The bare reference is the same UNet forward + backward with frozen weights and the gradient taken to
the context only: the least any adapter trainer must pay. A second reference, the UNet forward + backward
with weight gradients (what fine-tuning the UNet costs), is reported beside it. The three are interleaved
(bare, step, fine-tune, bare, step, ...) so that machine noise hits all alike; medians and ratios come from
the same run.

    python scripts/bench_train.py                        # tiny SD15-detected ComfyUI UNet, 8x8 latents, CPU
    python scripts/bench_train.py --real --res 512 --batch 1 --out docs/bench/train-cpu-512.json
    python scripts/bench_train.py --real --res 512 --batch 8 --device cuda   # fp16 autocast on the GPU
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def timer(device):
    def run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def log(msg: str) -> None:
    print(f"[bench_train] {msg}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", action="store_true", help="SD1.5-size UNet (860M parameters, random weights)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--res", type=int, default=64, help="image side in pixels (latents are res/8)")
    p.add_argument("--text", type=int, default=128, help="T5 tokens per caption")
    p.add_argument("--modality", default="face", choices=["face", "style", "object"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-finetune-reference", action="store_true",
                   help="skip the UNet forward + backward with weight gradients")
    p.add_argument("--comfyui", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    command = "python " + " ".join(["scripts/bench_train.py", *(sys.argv[1:] if argv is None else argv)])
    from devtools.host import import_comfy

    import_comfy(args.comfyui, builtin_nodes=False, cpu=device.type == "cpu")
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from devtools.real_size import machine_info, random_sd15_unet
    from devtools.standins import TINY_SD15_UNET, reset_all_parameters
    from emma_core.adapters import DEFAULT_DIMS, Features
    from emma_core.ella import ELLA
    from emma_core.emma_module import EMMAConfig, EMMAModule
    from emma_core.train.loop import TrainConfig, adamw
    from emma_core.train.objective import EMMATask

    machine = machine_info(device)
    amp = torch.float16 if device.type == "cuda" else None
    unet = random_sd15_unet() if args.real else reset_all_parameters(UNetModel(**TINY_SD15_UNET))
    unet = unet.to(device).requires_grad_(False)
    ella = ELLA().to(device).requires_grad_(False)
    kind = {"face": "face", "style": "style", "object": "clip_tokens"}[args.modality]
    module = EMMAModule(EMMAConfig(args.modality)).to(device)
    for block in module.branch:  # open the gates so the branch does real work (as after training)
        torch.nn.init.constant_(block.global_gate_attn, 0.5)
        torch.nn.init.constant_(block.global_gate_ffn, 0.5)
    b, side = args.batch, args.res // 8
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(b, 4, side, side, generator=gen).to(device)
    texts = [torch.randn(args.text, 2048, generator=gen) for _ in range(b)]
    feats = Features(kind, {k: torch.randn(b, *shape, generator=gen).to(device)
                            for k, shape in DEFAULT_DIMS[kind].items()})
    batch = {"latents": latents, "text": texts, "features": feats, "index": torch.arange(b)}
    denoiser = lambda x, t, ctx: unet(x, t, context=ctx)  # noqa: E731
    task = EMMATask(module, ella, denoiser, empty_text=torch.randn(1, 2048, generator=gen),
                    text_dropout=0.0, cond_dropout=0.0)
    opt = adamw(list(module.parameters()), TrainConfig(lr=1e-4))  # the trainer's optimiser
    draw = torch.Generator(device=device).manual_seed(0)
    t = torch.randint(0, 1000, (b,), generator=gen).to(device)
    ctx = torch.randn(b, 64, 768, generator=gen).to(device)

    def bare():
        c = ctx.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = unet(latents, t, context=c)
        out.float().square().mean().backward()

    def finetune():
        unet.requires_grad_(True)
        try:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = unet(latents, t, context=ctx)
            out.float().square().mean().backward()
        finally:
            unet.requires_grad_(False)
            unet.zero_grad(set_to_none=True)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):  # as the loop runs it
            loss = task(batch, draw)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()

    runs = {"bare": bare, "step": step}
    if not args.no_finetune_reference:
        runs["finetune"] = finetune
    run = timer(device)
    log(f"{'SD1.5-size' if args.real else 'tiny'} UNet on {device}, batch {b}, latents {side}x{side}, "
        f"{args.warmup} warm-up + {args.repeats} interleaved rounds of {', '.join(runs)}")
    for _ in range(args.warmup):
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(run(fn))
        log(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in runs))
    med = {n: statistics.median(v) for n, v in times.items()}
    paired = statistics.median(s_ / b_ for s_, b_ in zip(times["step"], times["bare"]))
    machine["load_average_at_end"] = list(os.getloadavg())
    result = {
        "command": command, "machine": machine, "real_size": args.real, "batch": b, "latent": [4, side, side],
        "text_tokens": args.text, "modality": args.modality, "autocast": str(amp) if amp else None,
        "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "ella_params_M": round(sum(p.numel() for p in ella.parameters()) / 1e6, 1),
        "trainable_params_M": round(sum(p.numel() for p in module.parameters()) / 1e6, 1),
        "times_s": times, "median_s": med,
        "ratio_step_over_bare": round(med["step"] / med["bare"], 4),
        "median_of_paired_ratios": round(paired, 4),
        "within_1_2x": med["step"] / med["bare"] <= 1.2,
    }
    if "finetune" in med:
        result["ratio_step_over_finetune"] = round(med["step"] / med["finetune"], 4)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
