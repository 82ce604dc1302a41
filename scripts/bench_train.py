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

--memory measures gradient checkpointing (emma_core/train/checkpointing.py) instead: the bytes autograd keeps
for backward in one training step's forward (saved-tensor hooks; each storage once; parameters and buffers left
out; "fp16" counts every floating element at 2 bytes), per sample, for each checkpointed layer set and with
ComfyUI's attention for the device and PyTorch's SDPA (what ComfyUI runs on NVIDIA GPUs), and the training
step's time with checkpointing off and on, interleaved (off, on, off, on, ...):

    python scripts/bench_train.py --memory --real --res 512 --batch 1 --out docs/bench/train-memory-cpu-512.json

On a GPU every timed run also records torch.cuda.max_memory_allocated (the real peak, weights included).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def interleaved(runs: dict, warmup: int, repeats: int, run, device) -> tuple[dict, dict]:
    """Each of `runs` once per round, `repeats` rounds after `warmup` (machine noise hits all alike): the
    seconds of every run, and on CUDA its torch.cuda.max_memory_allocated."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    peaks = {name: [] for name in runs}
    for r in range(repeats):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(run(fn))
            if device.type == "cuda":
                peaks[name].append(torch.cuda.max_memory_allocated(device))
        log(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in runs))
    return times, peaks


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
    p.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"],
                   help="for the step (auto: as the trainer, on with CUDA)")
    p.add_argument("--layers", default=None,
                   help="the checkpointed layers (emma_core.train.checkpointing.LAYER_SETS; "
                        "default its DEFAULT_LAYERS)")
    p.add_argument("--memory", action="store_true",
                   help="bytes kept for backward and step time with gradient checkpointing off and on")
    p.add_argument("--sets", default="none,attention,resblocks,unet,all",
                   help="--memory: the layer sets whose kept bytes are measured (comma-separated; '' none)")
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
    from emma_core.train import checkpointing
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
    layers = args.layers or checkpointing.DEFAULT_LAYERS
    checkpointing.layer_kinds(layers)
    on = {"auto": device.type == "cuda", "on": True, "off": False}[args.gradient_checkpointing]
    empty = torch.randn(1, 2048, generator=gen)

    def make_task(ckpt):
        return EMMATask(module, ella, denoiser, empty_text=empty, text_dropout=0.0, cond_dropout=0.0,
                        gradient_checkpointing=ckpt, checkpoint_unet=unet)

    task = make_task(layers if on else False)
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

    def step(task=task):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):  # as the loop runs it
            loss = task(batch, draw)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()

    run = timer(device)
    info = {"command": command, "machine": machine, "real_size": args.real, "batch": b, "latent": [4, side, side],
            "text_tokens": args.text, "modality": args.modality, "autocast": str(amp) if amp else None,
            "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
            "ella_params_M": round(sum(p.numel() for p in ella.parameters()) / 1e6, 1),
            "trainable_params_M": round(sum(p.numel() for p in module.parameters()) / 1e6, 1)}
    if args.memory:
        result = memory_bench(args, info, device, amp, run, make_task, step, batch, unet, ella, module, layers)
        return write_result(result, args.out)
    runs = {"bare": bare, "step": step}
    if not args.no_finetune_reference:
        runs["finetune"] = finetune
    log(f"{'SD1.5-size' if args.real else 'tiny'} UNet on {device}, batch {b}, latents {side}x{side}, "
        f"{args.warmup} warm-up + {args.repeats} interleaved rounds of {', '.join(runs)}")
    times, peaks = interleaved(runs, args.warmup, args.repeats, run, device)
    med = {n: statistics.median(v) for n, v in times.items()}
    paired = statistics.median(s_ / b_ for s_, b_ in zip(times["step"], times["bare"]))
    machine["load_average_at_end"] = list(os.getloadavg())
    result = {
        **info, "gradient_checkpointing": layers if on else False,
        "times_s": times, "median_s": med,
        "ratio_step_over_bare": round(med["step"] / med["bare"], 4),
        "median_of_paired_ratios": round(paired, 4),
        "within_1_2x": med["step"] / med["bare"] <= 1.2,
    }
    if "finetune" in med:
        result["ratio_step_over_finetune"] = round(med["step"] / med["finetune"], 4)
    if device.type == "cuda":
        result["cuda_max_memory_allocated_bytes"] = {n: max(v) for n, v in peaks.items()}
    return write_result(result, args.out)


def write_result(result: dict, out) -> int:
    print(json.dumps(result, indent=1))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


GB = 1e9
GOAL_GB_PER_SAMPLE = 0.3   # fp16-equivalent bytes kept for backward per sample, checkpointing on
GOAL_STEP_RATIO = 1.35     # step time on / off


@contextlib.contextmanager
def attention_function(name: str):
    """ComfyUI's attention: "comfy" as it chose for this device, "pytorch" its SDPA (what it runs on NVIDIA
    GPUs; on the CPU ComfyUI picks sub-quadratic attention, which keeps its attention weights for backward)."""
    import comfy.ldm.modules.attention as attention

    chosen = attention.optimized_attention
    if name == "pytorch":
        attention.optimized_attention = attention.attention_pytorch
    try:
        yield chosen.__name__ if name == "comfy" else attention.attention_pytorch.__name__
    finally:
        attention.optimized_attention = chosen


def memory_bench(args, info, device, amp, run, make_task, step, batch, unet, ella, module, layers) -> dict:
    from emma_core.train import checkpointing

    b = info["batch"]
    frozen = [*unet.parameters(), *unet.buffers(), *ella.parameters(), *ella.buffers(), *module.parameters(),
              *module.buffers()]
    layer_names = [f"{i:02d} {kind}" for i, (kind, _) in enumerate(checkpointing.unet_layers(unet))]

    def saved(task, per_layer: bool) -> dict:
        """One training forward (the step's, under the loop's autocast) under the saved-tensor count."""
        largest = (0, None)
        handles = []
        with checkpointing.SavedTensors(exclude=frozen) as count:
            if per_layer:  # what each UNet layer alone keeps (what recomputing it brings back in backward)
                entry = {}
                for name, (_, layer) in zip(layer_names, checkpointing.unet_layers(unet)):
                    handles.append(layer.register_forward_pre_hook(
                        lambda m, a, name=name: entry.__setitem__(name, count.fp16_bytes)))

                    def after(m, a, o, name=name):
                        nonlocal largest
                        largest = max(largest, (count.fp16_bytes - entry[name], name), key=lambda x: x[0])

                    handles.append(layer.register_forward_hook(after))
            try:
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = task(batch, torch.Generator(device=device).manual_seed(0))
            finally:
                for h in handles:
                    h.remove()
        del loss  # frees the graph without a backward
        out = {"fp16_bytes_per_sample": count.fp16_bytes // b, "bytes_per_sample": count.bytes // b,
               "tensors": count.count}
        if per_layer:
            out["largest_layer"] = {"name": largest[1], "fp16_bytes_per_sample": largest[0] // b}
        return out

    attentions = ["comfy"] + (["pytorch"] if device.type == "cpu" else [])
    sets = [name for name in args.sets.split(",") if name]
    for name in sets:
        checkpointing.layer_kinds(name)
    kept = {}
    for attention in attentions:
        with attention_function(attention) as function:
            kept[function] = {}
            for name in sets:
                t0 = time.perf_counter()
                kept[function][name] = saved(make_task(name if name != "none" else False), per_layer=name == "none")
                log(f"kept for backward, {function}, layers {name}: "
                    f"{kept[function][name]['fp16_bytes_per_sample'] / GB:.3f} GB fp16 per sample "
                    f"({time.perf_counter() - t0:.1f} s)")

    with attention_function("comfy") as timed_attention:
        runs = {"off": lambda: step(make_task(False)), "on": lambda: step(make_task(layers))}
        log(f"step time, checkpointing off / on ({layers}), {timed_attention}: {args.warmup} warm-up + "
            f"{args.repeats} interleaved rounds")
        times, peaks = interleaved(runs, args.warmup, args.repeats, run, device)
    info["machine"]["load_average_at_end"] = list(os.getloadavg())
    timed = kept[timed_attention]
    off_gb = timed["none"]["fp16_bytes_per_sample"] / GB if "none" in timed else None
    on_gb = timed[layers]["fp16_bytes_per_sample"] / GB if layers in timed else None
    result = {**info, "mode": "memory", "layers": layers, "timed_attention": timed_attention,
              "measure": "bytes autograd keeps for backward after one training forward (saved-tensor hooks), "
                         "each storage once, parameters and buffers excluded, per sample; fp16 = 2 bytes per "
                         "floating element",
              "kept_for_backward": kept,
              "fp16_gb_per_sample": {"off": None if off_gb is None else round(off_gb, 4),
                                     "on": None if on_gb is None else round(on_gb, 4)}}
    if times["off"]:
        med = {n: statistics.median(v) for n, v in times.items()}
        ratio = med["on"] / med["off"]
        result.update({"times_s": times, "median_s": med, "ratio_on_over_off": round(ratio, 4),
                       "median_of_paired_ratios": round(statistics.median(
                           n / f for n, f in zip(times["on"], times["off"])), 4),
                       "goal": {"fp16_gb_per_sample_at_most": GOAL_GB_PER_SAMPLE, "step_ratio_at_most": GOAL_STEP_RATIO,
                                "memory_met": on_gb is not None and on_gb <= GOAL_GB_PER_SAMPLE,
                                "time_met": ratio <= GOAL_STEP_RATIO}})
        if device.type == "cuda":
            result["cuda_max_memory_allocated_bytes"] = {n: max(v) for n, v in peaks.items()}
    if "none" in timed and layers in timed:
        result["vram_estimate"] = vram_estimate(kept, layers, unet, ella, module)
    return result


def vram_estimate(kept: dict, layers: str, unet, ella, module) -> dict:
    """Peak GPU memory of a training step at fp16, estimated: the weights (UNet and connector fp16; the module
    fp32 with its gradients, AdamW's two moments and the EMA copy the front ends keep) plus, per sample, what
    autograd keeps with PyTorch's SDPA (ComfyUI's attention on NVIDIA GPUs); checkpointing on adds the largest
    layer's insides (what recomputing it brings back during backward). Not counted: the CUDA context, cuDNN
    workspaces, the allocator's cache, the gradients in flight. A GPU run records the real peak instead."""
    acts = kept.get("attention_pytorch") or next(iter(kept.values()))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    weights = {"unet_fp16": count(unet) * 2, "ella_fp16": count(ella) * 2,
               "module_fp32_grads_adamw_ema": count(module) * 4 * 5}
    per_sample = {"off": acts["none"]["fp16_bytes_per_sample"],
                  "on": acts[layers]["fp16_bytes_per_sample"] + acts["none"]["largest_layer"]["fp16_bytes_per_sample"]}
    total = sum(weights.values())
    return {"attention": "attention_pytorch" if "attention_pytorch" in kept else next(iter(kept)),
            "weights_gb": {k: round(v / GB, 3) for k, v in weights.items()}, "weights_total_gb": round(total / GB, 3),
            "activations_gb_per_sample": {k: round(v / GB, 3) for k, v in per_sample.items()},
            "peak_gb": {f"batch {n}": {k: round((total + n * v) / GB, 2) for k, v in per_sample.items()}
                        for n in (1, 4, 8, 16)}}


if __name__ == "__main__":
    sys.exit(main())
