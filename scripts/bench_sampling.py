#!/usr/bin/env python
"""Sampling-cost benchmark of ELLA / EMMA in a real ComfyUI, at real model sizes with random weights.

    .venv/bin/python scripts/bench_sampling.py [--steps N] [--size 512] [--repeats R] [--device auto]
                                               [--out docs/bench/sampling-cpu.json]

Not a test: it builds real-size models (SD1.5 UNet through ComfyUI's own loader, ELLA, three EMMA modules,
flan-t5-xl, CLIP ViT-H) with random weights (a random weight costs what a trained one costs) and reports,
from one run on this machine:

1. per-step sampling time of ELLA text, and of text + face + object assembled, divided by plain SD1.5 CLIP
   conditioning (same KSampler, euler, cfg 7, seed, steps, size); configurations interleaved A B C A B C ...
   so machine noise hits all alike; medians and ratios from the same run. Beside them the FLOP floor:
   the connector's own FLOPs per model call over the UNet's (torch.utils.flop_counter).
2. T5 encode time of a 3-sentence prompt, and the repeated prompt (a cache hit: no T5 forward at all).
3. peak memory during sampling with and without the pack, and whether T5 is resident on the compute device
   during sampling.
4. face (InsightFace) and CLIP vision feature extraction time per image.

See docs/performance.md for the method and the recorded results.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from devtools.real_size import FLAN_T5_XL, SD15_UNET, machine_info, random_state_dict  # noqa: E402
DEFAULT_MODELS = REPO_ROOT / ".cache" / "test-models"

PROMPT = ("A weathered lighthouse keeper stands on a rocky shore at dusk, holding a brass lantern. "
          "Behind him the sea is grey and restless, and gulls circle the tower's red and white stripes. "
          "The scene is painted in the loose, warm brushwork of a nineteenth-century oil study.")

# ------------------------------------------------------------------------------------------------ FLOPs
def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_mapping() -> dict:
    """torch's flop counter knows the CUDA SDPA kernels but not the CPU one: without this, every attention
    product on the CPU (nn.MultiheadAttention, ComfyUI's pytorch attention) would count as 0 FLOPs."""

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_flop  # FlopCounterMode wraps custom entries with shape_wrapper itself
    return mapping


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul, convolution and attention FLOPs (2 per multiply-add) of one call of fn; elementwise work
    (norms, activations, adds) is not counted, as usual."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_attention_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())


def ella_flops_analytic(config, text_tokens: int, rows: int = 1) -> int:
    """ELLA's connector FLOPs for one call (one timestep for all rows), written out from emma_core/ella.py:
    the time embedding and the AdaLN/time-aware linears run once per timestep row (one token), the rest on
    `rows` rows of 64 latents and `text_tokens` T5 tokens."""
    w, te, tc, latents, n = config.width, config.time_embed_dim, config.time_channels, config.num_latents, text_tokens
    once = 2 * tc * te + 2 * te * te + 2 * te * w  # time embedding + time_aware_linear (1 timestep row)
    once += config.layers * 3 * 2 * te * (2 * w)  # ln_1, ln_2, ln_ff linears of every block
    per_row = 2 * n * config.input_dim * w  # proj_in
    kv = latents + n
    block = 2 * latents * w * w + 2 * 2 * kv * w * w  # q, k, v in-projections
    block += 2 * 2 * latents * kv * w  # q.k and attn.v
    block += 2 * latents * w * w  # out projection
    block += 2 * 2 * latents * w * 4 * w  # squared-ReLU MLP
    per_row += config.layers * block
    return once + rows * per_row


def unet_call_flops(size: int, context_tokens: int, batch: int = 2) -> int:
    """One SD1.5 UNet call (ComfyUI's UNetModel, SD15 config) counted on the meta device: no weights, no
    compute, so it costs seconds at any size. ComfyUI's CPU attention (sub-quadratic) asks the device for
    free memory, which the meta device cannot answer; attention_basic does the same products (q.k^T and
    attn.v, no recomputation), so it is swapped in while counting."""
    import comfy.ldm.modules.attention as attention
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    chosen = attention.optimized_attention
    attention.optimized_attention = attention.attention_basic
    try:
        with torch.device("meta"):
            unet = UNetModel(**SD15_UNET)
            x = torch.empty(batch, 4, size // 8, size // 8)
            context = torch.empty(batch, context_tokens, 768)
            timesteps = torch.full((batch,), 500.0)
        with torch.inference_mode():
            return count_flops(lambda: unet(x, timesteps, context=context))
    finally:
        attention.optimized_attention = chosen


def flop_floor(connector_flops: int, unet_flops: int) -> float:
    """The least overhead the pack can add per model call: its own FLOPs over the UNet's (same call)."""
    if unet_flops <= 0:
        raise ValueError("UNet FLOPs must be positive")
    return connector_flops / unet_flops


# ------------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Hand the heap's free memory back to the OS first: glibc keeps freed blocks (here gigabytes from T5
    and CLIP vision), which the next run would reuse without its RSS growing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a region. CUDA: torch.cuda.max_memory_allocated. CPU: the process RSS, sampled by a
    background thread every 10 ms, and the kernel's own peak (VmHWM, reset at entry) when available."""

    def __init__(self, device: torch.device):
        self.device = device
        self.result: dict = {}

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self._base = _rss_bytes()
        self._hwm_ok = _reset_hwm()
        self._peak = self._base
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.01):
                self._peak = max(self._peak, _rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.result = dict(kind="cuda max_memory_allocated", baseline=self._base, peak=peak,
                               delta=peak - self._base)
            return False
        self._stop.set()
        self._thread.join()
        peak = max(self._peak, _rss_bytes())
        hwm = _hwm_bytes() if self._hwm_ok else None
        if hwm is not None:
            peak = max(peak, hwm)
        self.result = dict(kind="process RSS (malloc_trim, VmHWM reset + 10 ms sampling)" if hwm is not None
                           else "process RSS (10 ms sampling)", baseline=self._base, peak=peak,
                           delta=peak - self._base)
        return False


# ------------------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(values):
    return statistics.median(values) if values else None


def fmt_s(v):
    return "-" if v is None else (f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s")


def fmt_gb(v):
    return "-" if v is None else f"{v / 2**30:.2f} GiB"


# ------------------------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.results: dict = {}

    # ---- setup -----------------------------------------------------------------------------------
    def setup_comfy(self):
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from devtools.host import import_comfy, load_pack_in_process
        from devtools.standins import ensure_standins

        requested = self.args.device
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        t0 = time.perf_counter()
        mods = import_comfy(cpu=requested == "cpu")
        self.standins = ensure_standins(self.args.models_root, verbose=True)
        load_pack_in_process(self.args.models_root)
        self.nodes = mods["nodes"]
        self.mm = mods["model_management"]
        self.m = self.nodes.NODE_CLASS_MAPPINGS
        self.device = self.mm.get_torch_device()
        pkg = self.m["EMMALoadELLA"].__module__.rsplit(".nodes.", 1)[0]
        self.pack = lambda sub: importlib.import_module(f"{pkg}.{sub}")
        import comfy.utils

        comfy.utils.PROGRESS_BAR_ENABLED = False
        log(f"ComfyUI imported, pack loaded in {time.perf_counter() - t0:.1f} s; compute device {self.device}")

    def build_unet(self):
        import comfy.sd
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        t0 = time.perf_counter()
        with torch.device("meta"):
            skeleton = UNetModel(**SD15_UNET)
        sd = random_state_dict(skeleton, seed=1)
        del skeleton
        params = sum(v.numel() for v in sd.values())
        t1 = time.perf_counter()
        model = comfy.sd.load_diffusion_model_state_dict(sd)
        del sd
        gc.collect()
        detected = type(model.model.model_config).__name__
        if detected != "SD15":
            raise RuntimeError(f"ComfyUI detected the random UNet as {detected}, not SD15")
        self.unet = model
        import comfy.ldm.modules.attention as attention

        self.results["unet"] = dict(params=params, detected_as=detected, dtype=str(model.model.get_dtype()),
                                    attention=attention.optimized_attention.__name__,
                                    build_s=t1 - t0, load_s=time.perf_counter() - t1)
        log(f"SD1.5 UNet: {params / 1e6:.1f} M params, detected {detected}, {model.model.get_dtype()}, "
            f"attention {attention.optimized_attention.__name__} ({time.perf_counter() - t0:.1f} s)")

    def load_pack_models(self):
        t0 = time.perf_counter()
        self.ella = self.m["EMMALoadELLA"].execute(self.standins["ella"]).result[0]
        self.modules = {k: self.m["EMMALoadModule"].execute(v).result[0] for k, v in self.standins["emma"].items()}
        gates = {k: [float(torch.tanh(b.global_gate_attn)) for b in h.module.branch] for k, h in self.modules.items()}
        if any(g == 0.0 for v in gates.values() for g in v):
            raise RuntimeError(f"an EMMA stand-in has a zero global gate (an exact no-op branch): {gates}")
        self.results["pack_models"] = dict(
            ella_params=sum(p.numel() for p in self.ella.connector.parameters()),
            emma_params={k: sum(p.numel() for p in h.module.parameters()) for k, h in self.modules.items()},
            emma_tokens={k: h.module.config.num_tokens for k, h in self.modules.items()},
            dtype=str(next(self.ella.connector.parameters()).dtype))
        log(f"ELLA + EMMA modules loaded through the pack's loaders ({time.perf_counter() - t0:.1f} s): "
            f"{self.results['pack_models']}")

    # ---- features ---------------------------------------------------------------------------------
    def features(self):
        import numpy as np
        from skimage import data

        image = torch.from_numpy(np.asarray(data.astronaut())).float().div(255).unsqueeze(0)  # [1,512,512,3]
        reps = self.args.feature_repeats
        face_cls = self.m["EMMAFaceFeatures"]
        face_mod = self.pack("emma_core.face")
        provider = "cuda" if self.device.type == "cuda" else "cpu"
        t0 = time.perf_counter()
        face_mod.cached_analyzer(os.path.join(self.args.models_root, "insightface"), "antelopev2", provider, 640, 0.5)
        face_load = time.perf_counter() - t0
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            face, _aligned = face_cls.execute(image, "antelopev2", -1, 640, provider).result
            times.append(time.perf_counter() - t0)
        self.face = face
        emb = face.tensors["embedding"]
        log(f"face features: {fmt_s(median(times[1:]))}/image (first {fmt_s(times[0])}), embedding "
            f"{tuple(emb.shape)} norm {float(emb.norm()):.3f}")

        t0 = time.perf_counter()
        vision = self.m["CLIPVisionLoader"]().load_clip(self.standins["clip_vision"])[0]
        clip_load = time.perf_counter() - t0
        clip_params = sum(p.numel() for p in vision.model.parameters())
        ctimes = []
        with torch.inference_mode():
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                obj = self.m["EMMAImageFeatures"].execute(vision, image, "object / portrait", "center").result[0]
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                ctimes.append(time.perf_counter() - t0)
        self.obj = obj
        shapes = {k: list(v.shape) for k, v in obj.tensors.items()}
        log(f"CLIP ViT-H image features: {fmt_s(median(ctimes[1:]))}/image (first {fmt_s(ctimes[0])}), "
            f"{clip_params / 1e6:.0f} M params, {shapes}")
        self.results["features"] = dict(
            image="skimage.data.astronaut() 512x512", repeats=reps,
            face=dict(pack="antelopev2 (devtools/face_packs stand-in)", provider=provider, det_size=640,
                      analyzer_load_s=face_load, first_s=times[0], per_image_s=median(times[1:]),
                      all_s=times[1:], embedding_shape=list(emb.shape), embedding_norm=float(emb.norm())),
            clip_vision=dict(file=self.standins["clip_vision"], params=clip_params, load_s=clip_load,
                             dtype=str(next(vision.model.parameters()).dtype),
                             first_s=ctimes[0], per_image_s=median(ctimes[1:]), all_s=ctimes[1:], shapes=shapes))
        del vision
        gc.collect()

    # ---- T5 ---------------------------------------------------------------------------------------
    def _t5_file(self) -> Path:
        """flan-t5-xl's encoder with random weights, written once as fp16 .safetensors in the layout of the
        released encoder-only files, so the benchmark loads (and reloads) it through the pack's own loader."""
        from transformers import T5Config, T5EncoderModel

        path = REPO_ROOT / ".cache" / "bench-models" / "flan-t5-xl-encoder-random-seed5.fp16.safetensors"
        if path.is_file():
            return path
        atomic = self.pack("emma_core.atomic")
        t0 = time.perf_counter()
        with torch.device("meta"):
            skeleton = T5EncoderModel(T5Config(**FLAN_T5_XL))
        state = random_state_dict(skeleton, seed=5, embed_std=1.0)
        state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; written once, as HF does
        state = {k: v.half() for k, v in state.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.save_safetensors_atomic(path, state, {"format": "pt"})
        log(f"wrote {path.name} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s")
        return path

    def t5(self):
        handles = self.pack("nodes.handles")
        ella_nodes = self.pack("nodes.ella_nodes")
        path = self._t5_file()
        gc.collect()
        t0 = time.perf_counter()
        self.t5_handle = handles.load_t5_handle(str(path), "flan-t5-xl (random, real size)", ella_nodes.TOKENIZER_DIR,
                                                "auto", keep_loaded=self.args.keep_t5)
        load_s = time.perf_counter() - t0
        encoder, patcher = self.t5_handle.encoder, self.t5_handle.patcher
        params = sum(p.numel() for p in encoder.model.parameters())
        dtype = next(encoder.model.parameters()).dtype
        log(f"flan-t5-xl encoder: {params / 1e9:.3f} B params, {dtype}, loaded from {path.name} in {load_s:.1f} s; "
            f"load device {patcher.load_device}, offload device {patcher.offload_device}")

        forwards = [0]
        hook = encoder.model.register_forward_pre_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1))
        try:
            tokens = encoder.token_ids(PROMPT)[0].shape[1]
            sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
            t0 = time.perf_counter()
            first = self.t5_handle.encode(PROMPT, None)
            sync()
            first_s = time.perf_counter() - t0
            cached, fw0 = encoder.cached(PROMPT, None), forwards[0]
            t0 = time.perf_counter()
            again = self.t5_handle.encode(PROMPT, None)
            repeat_s = time.perf_counter() - t0
            repeat_forwards = forwards[0] - fw0
            hit = cached and repeat_forwards == 0
            # The same through the node the graph uses (a third lookup of the same prompt: another hit).
            t0 = time.perf_counter()
            self.positive = self.m["EMMATextEncode"].execute(self.ella, self.t5_handle, PROMPT, "flexible").result[0]
            node_repeat_s = time.perf_counter() - t0
            node_hit = forwards[0] == fw0
            self.negative = self.m["EMMATextEncode"].execute(self.ella, self.t5_handle, "", "flexible").result[0]
        finally:
            hook.remove()
        if not torch.isfinite(first).all():
            raise RuntimeError("random T5 gave non-finite features")
        assert torch.equal(first, again)
        self.results["t5"] = dict(
            file=path.name, params=params, dtype=str(dtype), load_s=load_s, prompt=PROMPT, prompt_tokens=tokens,
            first_encode_s=first_s, repeated_encode_s=repeat_s, repeated_cache_hit=hit,
            repeated_t5_forwards=repeat_forwards,
            node_repeated_encode_s=node_repeat_s, node_repeated_cache_hit=node_hit,
            t5_forward_calls_total=forwards[0],
            load_device=str(patcher.load_device), offload_device=str(patcher.offload_device),
            keep_loaded=self.args.keep_t5, after_encodes=self._t5_resident())
        log(f"T5 encode: first {fmt_s(first_s)} ({tokens} tokens), repeated {fmt_s(repeat_s)} "
            f"(cache hit: {hit}, T5 forwards on repeat: {repeat_forwards}); the ELLA Text Encode node on it "
            f"{fmt_s(node_repeat_s)} (hit: {node_hit}); after the encodes: {self.results['t5']['after_encodes']}")

    def t5_new_prompt_after_sampling(self):
        """What the next new prompt costs once sampling has released T5 (on the CPU: read from the file)."""
        before = self._t5_resident()
        reads = []  # seconds of each read of T5's file, timed where the handle reads it
        read_file = self.t5_handle.reload

        def timed_read():
            t0 = time.perf_counter()
            model = read_file()
            reads.append(time.perf_counter() - t0)
            return model

        self.t5_handle.reload = timed_read
        t0 = time.perf_counter()
        self.t5_handle.encode(PROMPT + " Seen from the sea.", None)
        total = time.perf_counter() - t0
        self.t5_handle.reload = read_file
        reload_s = reads[0] if reads else None
        self.results["t5"]["new_prompt_after_sampling"] = dict(before=before, total_s=total, reloads=len(reads),
                                                               reload_s=reload_s)
        log(f"T5 after sampling: {before}; a new prompt took {fmt_s(total)} (reading T5 again: {fmt_s(reload_s)})")

    def _t5_resident(self) -> dict:
        handle = self.t5_handle
        listed = any(lm.model is handle.patcher for lm in self.mm.current_loaded_models)
        params = list(handle.encoder.model.parameters())
        held = sum(p.numel() * p.element_size() for p in params if p.device.type != "meta")
        compute = torch.device(self.mm.get_torch_device())
        return dict(in_current_loaded_models=listed, weights_device=str(params[0].device), weights_bytes=held,
                    compute_device=str(compute),
                    resident_on_compute_device=held > 0 and params[0].device.type == compute.type)

    # ---- conditioning -----------------------------------------------------------------------------
    def conditioning(self):
        gen = torch.Generator().manual_seed(3)
        # What CLIPTextEncode gives for SD1.5: [[tokens [1, 77, 768], {"pooled_output": [1, 768]}]]
        plain_pos = [[torch.randn(1, 77, 768, generator=gen), {"pooled_output": torch.randn(1, 768, generator=gen)}]]
        plain_neg = [[torch.randn(1, 77, 768, generator=gen), {"pooled_output": torch.randn(1, 768, generator=gen)}]]
        applied = self.m["EMMAApplyToModel"].execute(self.unet).result[0]
        cond = self.m["EMMACondition"].execute(self.modules["face"], self.face, 1.0, 0.0, 1.0).result[0]
        cond = self.m["EMMACondition"].execute(self.modules["object"], self.obj, 1.0, 0.0, 1.0, cond).result[0]
        pos_asm, neg_asm = self.m["EMMAAssemble"].execute(self.positive, self.negative, cond, False).result
        self.configs = {
            "clip": dict(label="plain SD1.5 CLIP conditioning", model=self.unet, positive=plain_pos, negative=plain_neg),
            "ella": dict(label="ELLA text", model=applied, positive=self.positive, negative=self.negative),
            "assembled": dict(label="ELLA text + face + object assembled", model=applied, positive=pos_asm,
                              negative=neg_asm),
        }
        # The style module is loaded (three branches exist) but only face + object join the sampled prompt;
        # its per-call FLOPs are reported in the floor table.
        cond3 = self.m["EMMACondition"].execute(self.modules["style"], self.obj.__class__(
            "style", {"embeds": self.obj.tensors["embeds"]}), 1.0, 0.0, 1.0, cond).result[0]
        self.pos_three = self.m["EMMAAssemble"].execute(self.positive, self.negative, cond3, False).result[0]

    # ---- FLOPs ------------------------------------------------------------------------------------
    def flops(self):
        """Per model call (one sampler step with euler = one call, cond + uncond batched as 2 rows)."""
        connector = self.ella.connector
        t = torch.tensor([500.0])

        def context(cond):
            prompt = cond[0][1][self.pack("nodes.sampling").PROMPT_KEY]
            prompt.context(connector, t.to(self.device))  # warm the condition-token cache (once per prompt)
            return lambda: prompt.context(connector, t.to(self.device))

        with torch.inference_mode():
            self.mm.load_models_gpu([self.ella.patcher] + [h.patcher for h in self.modules.values()])
            pos_text = count_flops(context(self.positive))
            neg_text = count_flops(context(self.negative))
            pos_asm = count_flops(context(self.configs["assembled"]["positive"]))
            pos_three = count_flops(context(self.pos_three))
            prompt_obj = self.configs["assembled"]["positive"][0][1][self.pack("nodes.sampling").PROMPT_KEY]
            adapters = sum(count_flops(lambda c=c: c.module.condition_tokens(
                type(c.features)(c.features.kind, {k: v.to(self.device) for k, v in c.features.tensors.items()})))
                for c in prompt_obj.conditions)
        unet = {(size, tokens): unet_call_flops(size, tokens) for size in sorted({self.args.size, 512})
                for tokens in (77, 64)}
        unet = {k[1]: v for k, v in unet.items() if k[0] == self.args.size} | {("512", k[1]): v for k, v in unet.items()
                                                                                if k[0] == 512}
        text_tokens = self.positive[0][1][self.pack("nodes.sampling").PROMPT_KEY].length
        analytic = ella_flops_analytic(connector.config, text_tokens)
        per_call = dict(ella_text=pos_text + neg_text, assembled=pos_asm + neg_text,
                        three_branches=pos_three + neg_text)
        self.results["flops"] = dict(
            note="matmul/conv/attention FLOPs per model call (2 per multiply-add); batch 2 = cond + uncond; "
                 "the connector runs once per conditioning entry per call (positive, negative)",
            unet_call_ctx77=unet[77], unet_call_ctx64=unet[64],
            connector_positive_text=pos_text, connector_negative_text=neg_text,
            connector_positive_face_object=pos_asm, connector_positive_face_object_style=pos_three,
            ella_positive_analytic=analytic, positive_text_tokens=text_tokens,
            adapters_once_per_prompt=adapters,
            connector_per_call=per_call,
            floor_vs_clip_unet={k: flop_floor(v, unet[77]) for k, v in per_call.items()},
            floor_vs_same_unet={k: flop_floor(v, unet[64]) for k, v in per_call.items()},
            unet_ctx64_vs_ctx77=unet[64] / unet[77],
            unet_call_512_ctx77=unet[("512", 77)], unet_call_512_ctx64=unet[("512", 64)],
            floor_at_512_vs_clip_unet={k: flop_floor(v, unet[("512", 77)]) for k, v in per_call.items()})
        log(f"FLOPs per call: UNet {unet[77] / 1e12:.3f} TFLOP (77-token context), {unet[64] / 1e12:.3f} (64); "
            f"connector text {per_call['ella_text'] / 1e9:.2f} GFLOP, assembled {per_call['assembled'] / 1e9:.2f}, "
            f"with style too {per_call['three_branches'] / 1e9:.2f}; floor (vs same UNet call) "
            f"{100 * per_call['ella_text'] / unet[64]:.2f}% / {100 * per_call['assembled'] / unet[64]:.2f}%; "
            f"ELLA positive counted {pos_text / 1e9:.3f} vs analytic {analytic / 1e9:.3f} GFLOP")

    # ---- sampling ---------------------------------------------------------------------------------
    def _sample(self, cfg: dict, steps: int, seed: int = 7, size: Optional[int] = None, batch: int = 1):
        size = size or self.args.size
        latent = self.m["EmptyLatentImage"]().generate(size, size, batch)[0]
        with torch.inference_mode():
            out = self.nodes.common_ksampler(cfg["model"], seed, steps, 7.0, "euler", "normal",
                                             cfg["positive"], cfg["negative"], latent, denoise=1.0)[0]["samples"]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def _probe_run(self, name: str):
        """An untimed 1-step 64x64 run with a probe that records, at every model call, whether T5 is loaded on
        the compute device (this run also warms up allocations and model loading)."""
        import comfy.patcher_extension

        seen = []

        def probe(executor, *args, **kwargs):
            seen.append(self._t5_resident())
            return executor(*args, **kwargs)

        cfg = dict(self.configs[name])
        model = cfg["model"].clone()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "bench.t5_probe", probe)
        cfg["model"] = model
        t0 = time.perf_counter()
        out = self._sample(cfg, 1, size=64)
        return time.perf_counter() - t0, seen, out

    def sampling(self):
        steps, repeats = self.args.steps, self.args.repeats
        names = list(self.configs)
        warm = {}
        t5_during = {}
        for name in names:
            secs, seen, out = self._probe_run(name)
            warm[name] = secs
            t5_during[name] = seen[-1] if seen else None
            if not torch.isfinite(out).all():
                raise RuntimeError(f"{name}: sampling gave non-finite latents (random weights out of range)")
            log(f"warm-up {name} (1 step, 64x64): {secs:.1f} s; T5 at its model calls: {t5_during[name]}")
        runs = {n: [] for n in names}
        memory = {n: [] for n in names}
        outputs = {}
        order = []
        for rep in range(repeats):
            for name in names:
                with PeakMemory(self.device) as peak:
                    t0 = time.perf_counter()
                    outputs[name] = self._sample(self.configs[name], steps)
                    secs = time.perf_counter() - t0
                runs[name].append(secs)
                memory[name].append(peak.result)
                order.append(name)
                log(f"repeat {rep + 1}/{repeats} {name:9s}: {secs:.2f} s for {steps} steps = "
                    f"{secs / steps:.2f} s/step; peak {fmt_gb(peak.result['delta'])} over baseline "
                    f"{fmt_gb(peak.result['baseline'])}")
        per_step = {n: median(runs[n]) / steps for n in names}
        # Ratios per repeat (each repeat's three runs are neighbours in time), then their median.
        ratio_runs = {n: [runs[n][i] / runs["clip"][i] for i in range(repeats)] for n in names}
        self.results["sampling"] = dict(
            size=self.args.size, steps=steps, repeats=repeats, sampler="euler", scheduler="normal", cfg=7.0, seed=7,
            order=order, warmup_1step_64px_s=warm,
            runs_s={n: runs[n] for n in names},
            per_step_s=per_step,
            ratio_of_medians={n: per_step[n] / per_step["clip"] for n in names},
            median_of_paired_ratios={n: median(ratio_runs[n]) for n in names},
            paired_ratios=ratio_runs,
            spread_clip=(max(runs["clip"]) - min(runs["clip"])) / median(runs["clip"]) if repeats > 1 else None,
            latents_finite={n: bool(torch.isfinite(o).all()) for n, o in outputs.items()},
            latents_std={n: float(o.float().std()) for n, o in outputs.items()},
            labels={n: self.configs[n]["label"] for n in names})
        self.results["memory"] = dict(
            kind=memory["clip"][0]["kind"],
            per_config={n: dict(delta_bytes_median=median([r["delta"] for r in memory[n]]),
                                peak_bytes_max=max(r["peak"] for r in memory[n]),
                                baseline_bytes_median=median([r["baseline"] for r in memory[n]]),
                                runs=memory[n]) for n in names},
            t5_during_sampling=t5_during)

    # ---- schedule contexts: before / after --------------------------------------------------------------
    def schedule_matrix(self):
        """Per-step time and connector calls per run, for plain CLIP and for ELLA text / text + face + object
        computed per model call (the pack before the schedule contexts: EMMA_CONTEXT_RUN_MB=0), from the
        schedule computed as sampling starts (first run: the cache emptied), and repeated (new seed, same
        settings: from the cache). Sizes x batches, configurations interleaved within each repeat."""
        sampling = self.pack("nodes.sampling")
        connector = self.ella.connector
        calls = [0]  # forward (one prompt, one model call) and forward_groups (a run's whole schedule)
        hook = connector.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        grouped = connector.forward_groups

        def counted(*args, **kwargs):
            calls[0] += 1
            return grouped(*args, **kwargs)

        connector.forward_groups = counted
        limit = sampling.RUN_LIMIT_MB
        steps, repeats = self.args.matrix_steps, self.args.repeats
        modes = [("clip", None)] + [(n, m) for n in ("ella", "assembled") for m in ("per call", "schedule", "repeated")]
        out = []
        try:
            for size in self.args.matrix_sizes:
                for batch in self.args.matrix_batches:
                    rows = {f"{n}/{m}" if m else n: dict(runs=[], connector_calls=[], peak=[]) for n, m in modes}
                    for rep in range(repeats):
                        for name, mode in modes:
                            key = f"{name}/{mode}" if mode else name
                            sampling.RUN_LIMIT_MB = 0.0 if mode == "per call" else limit
                            if mode == "schedule":  # the first run: an empty cross-run cache
                                self.ella.contexts = type(self.ella.contexts)()
                            calls[0] = 0
                            with PeakMemory(self.device) as peak:
                                t0 = time.perf_counter()
                                self._sample(self.configs[name], steps, seed=7 + rep, size=size, batch=batch)
                                secs = time.perf_counter() - t0
                            rows[key]["runs"].append(secs)
                            rows[key]["connector_calls"].append(calls[0])
                            rows[key]["peak"].append(peak.result)
                            log(f"{size}px batch {batch} repeat {rep + 1}/{repeats} {key:22s}: {secs / steps:.3f} "
                                f"s/step, {calls[0]} connector calls, peak +{fmt_gb(peak.result['delta'])}")
                    clip = median(rows["clip"]["runs"])
                    out.append(dict(size=size, batch=batch, steps=steps, sampler="euler", scheduler="normal",
                                    per_step_s={k: median(v["runs"]) / steps for k, v in rows.items()},
                                    ratio_to_clip={k: median(v["runs"]) / clip for k, v in rows.items()},
                                    connector_calls_per_run={k: v["connector_calls"] for k, v in rows.items()},
                                    peak_delta_bytes={k: median([p["delta"] for p in v["peak"]]) for k, v in rows.items()},
                                    runs_s={k: v["runs"] for k, v in rows.items()}))
        finally:
            hook.remove()
            del connector.forward_groups
            sampling.RUN_LIMIT_MB = limit
        self.results["schedule_matrix"] = dict(
            note="connector calls per KSampler run: 'per call' = the pack before schedule contexts (2 prompts x "
                 "model calls); 'schedule' = contexts of every sigma computed as sampling starts (first run); "
                 "'repeated' = a new seed with the same settings (contexts from the cache)",
            dtype=str(next(connector.parameters()).dtype), blocks=out)

    # ---- report -----------------------------------------------------------------------------------
    def table(self) -> str:
        r = self.results
        s, f, t5, mem, feat = r["sampling"], r["flops"], r["t5"], r["memory"], r["features"]
        rows = ["| measure | value |", "|---|---|"]
        for n in ("clip", "ella", "assembled"):
            ratio = s["ratio_of_medians"][n]
            floor = "" if n == "clip" else (f"; FLOP floor {100 * f['floor_vs_clip_unet'][{'ella': 'ella_text', 'assembled': 'assembled'}[n]]:+.2f}%")
            rows.append(f"| per step, {s['labels'][n]} | {fmt_s(s['per_step_s'][n])} "
                        f"(x{ratio:.3f}, paired x{s['median_of_paired_ratios'][n]:.3f}{floor}) |")
        rows.append(f"| UNet FLOPs per call (batch 2, 77 / 64 context tokens) | {f['unet_call_ctx77'] / 1e12:.3f} / "
                    f"{f['unet_call_ctx64'] / 1e12:.3f} TFLOP |")
        rows.append(f"| FLOP floor at 512x512 (connector / UNet per call): text / + face + object | "
                    f"{100 * f['floor_at_512_vs_clip_unet']['ella_text']:.2f}% / "
                    f"{100 * f['floor_at_512_vs_clip_unet']['assembled']:.2f}% |")
        rows.append(f"| connector FLOPs per call: text / + face + object / + style | "
                    f"{f['connector_per_call']['ella_text'] / 1e9:.2f} / {f['connector_per_call']['assembled'] / 1e9:.2f} / "
                    f"{f['connector_per_call']['three_branches'] / 1e9:.2f} GFLOP |")
        rows.append(f"| T5 encode, first ({t5['prompt_tokens']} tokens) | {fmt_s(t5['first_encode_s'])} |")
        rows.append(f"| T5 encode, repeated prompt | {fmt_s(t5['repeated_encode_s'])} (cache hit: "
                    f"{t5['repeated_cache_hit']}; T5 forwards: {t5['repeated_t5_forwards']}) |")
        for n in ("clip", "ella", "assembled"):
            pc = mem["per_config"][n]
            rows.append(f"| peak memory during sampling, {s['labels'][n]} | +{fmt_gb(pc['delta_bytes_median'])} "
                        f"over {fmt_gb(pc['baseline_bytes_median'])} |")
        during = mem["t5_during_sampling"]["assembled"] or {}
        rows.append(f"| T5 during sampling (at every UNet call) | resident on the compute device ({during.get('compute_device')}): "
                    f"{during.get('resident_on_compute_device')}; weights held: {fmt_gb(during.get('weights_bytes'))}; "
                    f"in ComfyUI's loaded models: {during.get('in_current_loaded_models')} |")
        after = t5.get("new_prompt_after_sampling")
        if after:
            rows.append(f"| T5, a new prompt after sampling | {fmt_s(after['total_s'])} (of which reading T5 again: "
                        f"{fmt_s(after['reload_s'])}; T5 load at start: {fmt_s(t5['load_s'])}) |")
        rows.append(f"| face features per image (InsightFace, 512x512) | {fmt_s(feat['face']['per_image_s'])} |")
        rows.append(f"| CLIP ViT-H image features per image | {fmt_s(feat['clip_vision']['per_image_s'])} |")
        return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2, help="sampler steps per timed run (default 2)")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (default 512)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each configuration (default 2)")
    p.add_argument("--feature-repeats", type=int, default=2, help="timed feature extractions per kind, after one untimed")
    p.add_argument("--keep-t5", action="store_true",
                   help="Load flan-T5 Encoder's keep_loaded: T5 stays where it is while sampling (default: the "
                        "pack releases it as sampling starts)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--models-root", type=Path, default=DEFAULT_MODELS,
                   help="stand-in model files (devtools/standins), generated when missing")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results (default docs/bench/sampling-<cpu|cuda>.json)")
    p.add_argument("--matrix", action="store_true",
                   help="also time per-call vs schedule contexts (and repeated runs) over --matrix-sizes x "
                        "--matrix-batches, counting connector calls per run (docs/performance.md)")
    p.add_argument("--matrix-sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--matrix-batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--matrix-steps", type=int, default=20)
    p.add_argument("--skip-main", action="store_true", help="only the matrix (and what it needs)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    bench = Bench(args)
    bench.setup_comfy()
    device = bench.device
    if args.out is None:
        args.out = REPO_ROOT / "docs" / "bench" / f"sampling-{device.type}.json"
    command = "python " + " ".join([os.path.relpath(__file__, REPO_ROOT), *(sys.argv[1:] if argv is None else argv)])
    bench.results["machine"] = machine_info(device)
    bench.results["command"] = command
    log(f"machine: {bench.results['machine']}")
    # Order keeps the peak RAM low on a CPU machine: T5 (4.9 GB fp32) first, then CLIP vision, then the UNet.
    bench.load_pack_models()
    bench.t5()
    bench.features()
    bench.build_unet()
    bench.conditioning()
    bench.flops()
    if args.matrix:
        bench.schedule_matrix()
    if args.skip_main:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(bench.results, indent=1, default=str) + "\n")
        print(json.dumps(bench.results.get("schedule_matrix"), indent=1, default=str))
        return 0
    bench.sampling()
    bench.t5_new_prompt_after_sampling()
    bench.results["machine"]["load_average_at_end"] = list(os.getloadavg())
    bench.results["total_s"] = time.perf_counter() - t_start
    s = bench.results["sampling"]
    bench.results["acceptance"] = dict(
        assembled_overhead=s["ratio_of_medians"]["assembled"] - 1.0,
        assembled_overhead_paired=s["median_of_paired_ratios"]["assembled"] - 1.0,
        within_3_percent=s["ratio_of_medians"]["assembled"] <= 1.03,
        floor_assembled=bench.results["flops"]["floor_vs_clip_unet"]["assembled"],
        repeated_prompt_no_t5=bool(bench.results["t5"]["repeated_cache_hit"]),
        t5_during_sampling=bench.results["memory"]["t5_during_sampling"]["assembled"])
    table = bench.table()
    bench.results["table_markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(bench.results, indent=1, default=str) + "\n")
    print()
    print(f"{bench.results['machine']['cpu']}, {bench.results['machine']['logical_cpus']} CPUs, torch "
          f"{torch.__version__}, device {device}, {bench.results['machine']['date']}")
    print(f"command: {command}")
    print(table)
    print(f"\nwrote {args.out} ({bench.results['total_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
