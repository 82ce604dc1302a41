"""A toy world small enough to train on 2 CPU cores in seconds, with the real EMMA code paths.

Used by the learning test, the resume tests and the CPU benchmark. Everything is the real trainer (dataset
folder -> feature cache -> EMMATask -> train loop) and the real building blocks (emma_core.ella.ELLA,
emma_core.agpr.AGPRBlock, emma_core.adapters.FaceAdapter), only narrower:

- ELLA: width 64, 2 PR blocks, 8 latents, 32-d "T5" features (ELLAConfig supports this directly);
- the EMMA module: emma_core's EMMAModule built for that ELLA (a 16-d "face" feature, 4 tokens);
- the denoiser: ConvDenoiser, a small conv net with cross-attention to the context, epsilon prediction;
- "images": 64x64 pictures of K concepts (a coloured disc at a concept's position on a concept's
  background, jittered); "VAE": 8x8 average pooling + a fixed 1x1 projection to 4 channels; "T5": a fixed
  random vector per word; "face encoder": a fixed random projection of the 4x4-pooled picture, normalised.

The backbone (ELLA + denoiser) is first pre-trained on text -> picture (captions name the concept), as SD1.5 +
ELLA are pre-trained; then it is frozen and an EMMA module is trained on captions that do NOT name the concept
("a photo"), so only the condition features can tell the denoiser what to draw.

    python -m devtools.toy_train learn  [--steps 300]      the learning experiment (prints the losses)
    python -m devtools.toy_train run RUN_DIR --steps N ...     a resumable toy run (used by the kill test)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from devtools.datasets import InMemoryDataset
from emma_core.adapters import Features
from emma_core.ella import ELLA, ELLAConfig
from emma_core.emma_module import EMMAConfig, EMMAModule
from emma_core.timestep import sinusoid
from emma_core.train.cache import CacheEncoders, CachedDataset, Subset, build_cache, split_validation
from emma_core.train.dataset import scan_dataset
from emma_core.train.loop import TrainConfig, evaluate, train
from emma_core.train.objective import EMMATask
from emma_core.train.schedule import DDPMSchedule

TOY_ELLA = ELLAConfig(time_channels=64, time_embed_dim=64, width=64, layers=2, heads=4, num_latents=8, input_dim=32)
FACE_DIM = 16
CONCEPTS = ["apple", "boat", "cloud", "dune", "ember", "frost"]


def small_emma() -> EMMAModule:
    """EMMAModule for the toy ELLA: one AGPR block after each of its 2 PR blocks, 16-d face features."""
    return EMMAModule(EMMAConfig("face", feature_dims={"embedding": (FACE_DIM,)}, ella=TOY_ELLA))


class ConvDenoiser(nn.Module):
    """eps(x_t, t, context): conv in, time embedding, res block, cross-attention to the context, res block."""

    def __init__(self, channels: int = 64, context_dim: int = TOY_ELLA.width, latent_channels: int = 4):
        super().__init__()
        self.conv_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(64, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.res1 = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, 4, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.res2 = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.conv_out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x) + self.time(sinusoid(timesteps, 64).to(x.device))[:, :, None, None]
        h = h + self.res1(h)
        b, c, hh, ww = h.shape
        q = self.norm(h.flatten(2).transpose(1, 2))
        h = h + self.attn(q, context, context, need_weights=False)[0].transpose(1, 2).reshape(b, c, hh, ww)
        h = h + self.res2(h)
        return self.conv_out(h)


# ---- the toy world's data and "encoders" --------------------------------------------------------------
def _gen(*key) -> torch.Generator:
    return torch.Generator().manual_seed(int(hashlib.sha256(repr(key).encode()).hexdigest()[:12], 16))


def concept_picture(concept: int, jitter_seed: int, size: int = 64) -> torch.Tensor:
    """[size, size, 3] in [0, 1]."""
    g = _gen("concept", concept)
    background, disc = torch.rand(3, generator=g), torch.rand(3, generator=g)
    cx, cy = (0.25 + 0.5 * torch.rand(2, generator=g)).tolist()
    j = _gen("jitter", jitter_seed)
    cx, cy = cx + 0.06 * float(torch.randn((), generator=j)), cy + 0.06 * float(torch.randn((), generator=j))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    inside = (((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() < 0.22).float()[..., None]
    img = background * (1 - inside) + disc * inside + 0.03 * torch.randn(size, size, 3, generator=j)
    return img.clamp(0, 1)


_PROJ = torch.randn(4, 3, generator=_gen("vae")) * 1.5
_FACE = torch.randn(FACE_DIM, 48, generator=_gen("face")) / math.sqrt(48)


def toy_encode_image(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [1, H, W, 3] -> [1, 4, H/8, W/8]."""
    pooled = F.avg_pool2d(image.movedim(-1, 1).float(), 8) - 0.5
    return torch.einsum("oc,bchw->bohw", _PROJ, pooled) * 2.0


def toy_encode_text(text: str) -> torch.Tensor:
    words = text.lower().split()
    rows = [torch.randn(TOY_ELLA.input_dim, generator=_gen("word", w)) for w in words]
    rows.append(torch.randn(TOY_ELLA.input_dim, generator=_gen("eos")))
    return torch.stack(rows)


def toy_encode_condition(image: torch.Tensor, mask=None) -> Features:
    pooled = F.avg_pool2d(image.movedim(-1, 1).float(), image.shape[1] // 4).flatten(1) - 0.5
    if float(pooled.abs().max()) < 1e-3:
        raise ValueError("no face found (blank picture)")  # what a face encoder does on an empty image
    return Features("face", {"embedding": F.normalize(pooled @ _FACE.T, dim=-1)})


def toy_encoders() -> CacheEncoders:
    return CacheEncoders(toy_encode_text, toy_encode_image, toy_encode_condition,
                         fingerprint={"toy": 1, "feature_kind": "face"}, resolution=64)


def write_toy_dataset(folder: Path, count: int, caption: str = "a photo", seed: int = 0) -> list[int]:
    """count pictures (concept i % K) with `caption` (or the concept's name when caption is None)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    concepts = []
    for i in range(count):
        k = (i * 5 + seed) % len(CONCEPTS)
        arr = (concept_picture(k, seed * 100_000 + i).numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(caption if caption is not None else f"a photo of {CONCEPTS[k]}")
        concepts.append(k)
    return concepts


# ---- pre-training the toy backbone (text -> picture), with the same loop -----------------------------
class TextTask(nn.Module):
    """Trains ELLA + denoiser together on text -> latents (the toy's stand-in for SD1.5 + ELLA pre-training)."""

    def __init__(self, ella: ELLA, denoiser: ConvDenoiser, empty_text: torch.Tensor, text_dropout: float = 0.1):
        super().__init__()
        self.trainable = nn.ModuleDict({"ella": ella, "denoiser": denoiser})
        self.schedule, self.empty_text, self.text_dropout = DDPMSchedule(), empty_text, text_dropout

    @property
    def device(self):
        return next(self.parameters()).device

    def collate(self, samples):
        return {"latents": torch.stack([s["latents"] for s in samples]), "text": [s["text"] for s in samples],
                "index": torch.tensor([s["index"] for s in samples])}

    def losses(self, batch, noise, t, keep):
        ella, den = self.trainable["ella"], self.trainable["denoiser"]
        texts = [x if k else self.empty_text for x, k in zip(batch["text"], keep.tolist())]
        ctx = [None] * len(texts)
        for length in sorted({x.shape[0] for x in texts}):
            rows = [i for i, x in enumerate(texts) if x.shape[0] == length]
            out = ella(torch.stack([texts[i] for i in rows]), t[rows].float())
            for j, i in enumerate(rows):
                ctx[i] = out[j]
        ctx = torch.stack(ctx)
        pred = den(self.schedule.add_noise(batch["latents"], noise, t), t, ctx)
        return F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)

    def forward(self, batch, generator):
        b = batch["latents"].shape[0]
        noise = torch.randn(batch["latents"].shape, generator=generator)
        t = torch.randint(0, 1000, (b,), generator=generator)
        keep = torch.rand(b, generator=generator) >= self.text_dropout
        return self.losses(batch, noise, t, keep).mean()

    @torch.no_grad()
    def validation_losses(self, batch):
        g = torch.Generator().manual_seed(99)
        b = batch["latents"].shape[0]
        return self.losses(batch, torch.randn(batch["latents"].shape, generator=g),
                           torch.randint(0, 1000, (b,), generator=g), torch.ones(b, dtype=torch.bool))


def pretrained_backbone(work: Path, steps: int = 200, seed: int = 0) -> tuple[ELLA, ConvDenoiser]:
    """The toy ELLA + denoiser after text-conditioned pre-training; cached in work/backbone.pt."""
    path = work / f"backbone-{steps}-{seed}.pt"
    torch.manual_seed(seed)
    ella, den = ELLA(TOY_ELLA), ConvDenoiser()
    if path.is_file():
        state = torch.load(path, weights_only=True)
        ella.load_state_dict(state["ella"])
        den.load_state_dict(state["denoiser"])
        return ella, den
    samples = []
    for i in range(96):
        k = i % len(CONCEPTS)
        samples.append({"latents": toy_encode_image(concept_picture(k, 10_000 + i)[None])[0],
                        "text": toy_encode_text(f"a photo of {CONCEPTS[k]}"), "features": {}})
    task = TextTask(ella, den, toy_encode_text(""))
    config = TrainConfig(steps=steps, batch_size=16, lr=2e-3, warmup_iters=20, weight_decay=0.0,
                         checkpoint_every=0, log_every=50, seed=seed)
    train(task, InMemoryDataset(samples), config, work / "backbone-run", resume=False)
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"ella": ella.state_dict(), "denoiser": den.state_dict()}, path)
    return ella, den


# ---- the learning experiment ---------------------------------------------------------------------------
def permuted_features(dataset, shift: int = 1) -> "Subset":
    """The same samples with each one's condition features taken from another sample (a cyclic shift by
    `shift` concepts, so every sample gets another concept's features)."""

    class Swapped:
        def __init__(self, base):
            self.base, self.empty_text = base, base.empty_text

        def __len__(self):
            return len(self.base)

        def sample(self, i):
            s = dict(self.base.sample(i))
            s["features"] = self.base.sample((i + shift) % len(self.base))["features"]
            return s

    return Swapped(dataset)


def learn(work: Path, steps: int = 300, pretrain_steps: int = 200, count: int = 60, seed: int = 0,
          lr: float = 3e-3, verbose: bool = True) -> dict:
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    ella, den = pretrained_backbone(work, pretrain_steps, seed)
    t_backbone = time.perf_counter() - t0
    folder = work / "dataset"
    write_toy_dataset(folder, count, caption="a photo")
    scan = scan_dataset(folder)
    report = build_cache(scan.items, work / "cache", toy_encoders(), shard_size=16, scan_skipped=scan.skipped)
    data = CachedDataset(report.folder)
    train_idx, val_idx = split_validation(len(data), 0.2, seed)
    train_set, val_set = Subset(data, train_idx), Subset(data, val_idx)
    torch.manual_seed(seed + 1)
    module = small_emma()
    task = EMMATask(module, ella, den, empty_text=data.empty_text)
    untrained = evaluate(task, val_set, 16)
    config = TrainConfig(steps=steps, batch_size=16, lr=lr, warmup_iters=30, checkpoint_every=0,
                         val_every=max(1, steps // 6), log_every=10, seed=seed)
    t1 = time.perf_counter()
    train(task, train_set, config, work / "emma-run", val_set=val_set, resume=False)
    t_train = time.perf_counter() - t1
    trained = evaluate(task, val_set, 16)
    swapped = evaluate(task, permuted_features(val_set), 16)
    out = {"untrained_val_loss": untrained, "trained_val_loss": trained, "swapped_features_val_loss": swapped,
           "steps": steps, "train_images": len(train_set), "held_out_images": len(val_set),
           "backbone_seconds": round(t_backbone, 1), "emma_training_seconds": round(t_train, 1),
           "cache": str(report.folder), "run_dir": str(work / "emma-run")}
    if verbose:
        print(json.dumps(out, indent=1))
    return out


# ---- a resumable toy run (the kill test's subprocess) ---------------------------------------------------
def toy_task(seed: int = 0) -> tuple[EMMATask, InMemoryDataset]:
    torch.manual_seed(seed)
    ella, den = ELLA(TOY_ELLA), ConvDenoiser()
    module = small_emma()
    samples = []
    for i in range(24):
        pic = concept_picture(i % len(CONCEPTS), i)[None]
        samples.append({"latents": toy_encode_image(pic)[0], "text": toy_encode_text("a photo"),
                        "features": {k: v[0] for k, v in toy_encode_condition(pic).tensors.items()}})
    data = InMemoryDataset(samples, toy_encode_text(""))
    return EMMATask(module, ella, den, empty_text=data.empty_text), data


def run(run_dir: Path, steps: int, checkpoint_every: int, seed: int = 0, sleep: float = 0.0) -> None:
    task, data = toy_task(seed)
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup_iters=5, checkpoint_every=checkpoint_every,
                         log_every=1, seed=seed)

    def on_step(step, total, record):
        print(f"step {step} loss {record['loss']:.6f}", flush=True)
        if sleep:
            time.sleep(sleep)

    result = train(task, data, config, run_dir, on_step=on_step)
    print(f"resumed_from {result.resumed_from}", flush=True)
    torch.save({k: v for k, v in task.trainable.state_dict().items()}, run_dir / "final.pt")
    print("done", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="EMMA trainer toy world")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("learn")
    p.add_argument("--work", type=Path, default=Path(".cache/toy-learn"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--steps", type=int, default=40)
    r.add_argument("--checkpoint-every", type=int, default=10)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # these models are tiny: one thread is fastest, above all on a busy machine
    if args.cmd == "learn":
        learn(args.work, args.steps, args.pretrain_steps, seed=args.seed)
    else:
        run(args.run_dir, args.steps, args.checkpoint_every, args.seed, args.sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
