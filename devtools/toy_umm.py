"""UMM-Diffusion's projector training in the toy world (2 CPU cores, seconds), with the real UMMTask and loop.

- "text encoder": a fixed random vector per word (TEXT_DIM wide, layer-normalised); a caption is the
  4 tokens "a photo of <subject>" and the subject word is position 3. The caption names only a generic
  word ("thing"), so h_y alone does not say what to draw.
- "image encoder" (the CLIP image embedding stand-in): a fixed random projection of the 4x4-pooled picture,
  normalised (IMAGE_DIM wide).
- the frozen "UNet": toy.ConvDenoiser with cross-attention to the 4 text tokens, pre-trained (with the same
  loop) on contexts whose subject slot holds the TRUE concept vector (the word vector of the concept's
  name), as SD1.5 is pre-trained with the subject named in the caption. Then it is frozen.
- the projector (emma_core.umm.UMMProjector at toy widths) must learn to map the image embedding into that
  slot; only it trains.

    python -m devtools.toy_umm learn [--steps 250] [--pretrain-steps 300]
prints the held-out loss with an untrained projector, the trained one, and the trained one fed another
concept's image embedding (swapped).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from devtools.datasets import InMemoryDataset
from emma_core.train.cache import Subset, split_validation
from emma_core.train.loop import TrainConfig, evaluate, train
from emma_core.train.schedule import DDPMSchedule
from emma_core.train.umm import UMMTask, collate_umm, unified_context
from emma_core.umm import ProjectorConfig, UMMProjector

from devtools.toy_train import CONCEPTS, ConvDenoiser, _gen, concept_picture, toy_encode_image

TEXT_DIM, IMAGE_DIM, HIDDEN_DIM = 32, 16, 64
SUBJECT_POSITIONS = [3]
TOY_PROJECTOR = ProjectorConfig(image_dim=IMAGE_DIM, text_dim=TEXT_DIM, hidden_dim=HIDDEN_DIM,
                                image_encoder="toy-image", text_encoder="toy-text")
_IMG = torch.randn(IMAGE_DIM, 48, generator=_gen("umm-image")) / math.sqrt(48)


def word_vector(word: str) -> torch.Tensor:
    v = torch.randn(TEXT_DIM, generator=_gen("umm-word", word))
    return F.layer_norm(v, (TEXT_DIM,))


def toy_text_states(words) -> torch.Tensor:
    return torch.stack([word_vector(w) for w in words])


def toy_image_embed(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [1, H, W, 3] -> [IMAGE_DIM], a CLIP-image-embedding stand-in."""
    pooled = F.avg_pool2d(image.movedim(-1, 1).float(), image.shape[1] // 4).flatten(1) - 0.5
    return F.normalize(pooled @ _IMG.T, dim=-1)[0] * math.sqrt(IMAGE_DIM)


def make_samples(count: int, seed: int = 0) -> list[dict]:
    """(latents, h_y of "a photo of thing", image embedding of the picture, subject positions, concept)."""
    h_y = toy_text_states(["a", "photo", "of", "thing"])
    out = []
    for i in range(count):
        k = (i * 5 + seed) % len(CONCEPTS)
        pic = concept_picture(k, seed * 100_000 + i)[None]
        # the subject image is another picture of the same concept (as with a reference image of the subject)
        ref = concept_picture(k, seed * 100_000 + 50_000 + i)[None]
        out.append({"latents": toy_encode_image(pic)[0], "h_y": h_y, "image_embeds": toy_image_embed(ref),
                    "positions": SUBJECT_POSITIONS, "concept": k})
    return out


class _TrueSlotTask(nn.Module):
    """Pre-trains the toy denoiser on contexts whose subject slot holds the concept's own word vector."""

    def __init__(self, denoiser: ConvDenoiser):
        super().__init__()
        self.trainable = denoiser
        self.schedule = DDPMSchedule()

    @property
    def device(self):
        return next(self.parameters()).device

    def collate(self, samples):
        batch = collate_umm(samples)
        batch["slot"] = torch.stack([word_vector(CONCEPTS[s["concept"]]) for s in samples])
        return batch

    def losses(self, batch, noise, t):
        ctx = unified_context(batch["h_y"], batch["positions"], batch["slot"])
        pred = self.trainable(self.schedule.add_noise(batch["latents"], noise, t), t, ctx)
        return F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)

    def forward(self, batch, generator):
        b = batch["latents"].shape[0]
        noise = torch.randn(batch["latents"].shape, generator=generator)
        return self.losses(batch, noise, torch.randint(0, 1000, (b,), generator=generator)).mean()

    @torch.no_grad()
    def validation_losses(self, batch):
        g = torch.Generator().manual_seed(99)
        b = batch["latents"].shape[0]
        return self.losses(batch, torch.randn(batch["latents"].shape, generator=g), torch.randint(0, 1000, (b,), generator=g))


def pretrained_denoiser(work: Path, steps: int = 300, seed: int = 0) -> ConvDenoiser:
    """The frozen toy "UNet" (cached in work/umm-denoiser-<steps>-<seed>.pt)."""
    path = work / f"umm-denoiser-{steps}-{seed}.pt"
    torch.manual_seed(seed)
    den = ConvDenoiser(channels=32, context_dim=TEXT_DIM)
    if path.is_file():
        den.load_state_dict(torch.load(path, weights_only=True))
        return den
    data = InMemoryDataset(make_samples(96, seed=seed + 7))
    config = TrainConfig(steps=steps, batch_size=16, lr=2e-3, warmup_iters=20, weight_decay=0.0,
                         checkpoint_every=0, log_every=50, seed=seed)
    train(_TrueSlotTask(den), data, config, work / "umm-denoiser-run", resume=False)
    work.mkdir(parents=True, exist_ok=True)
    torch.save(den.state_dict(), path)
    return den


class SwappedEmbeds:
    """The same samples, each with the image embedding of the next sample of ANOTHER concept."""

    def __init__(self, base):
        self.base = base
        self.empty_text = getattr(base, "empty_text", None)

    def __len__(self):
        return len(self.base)

    def sample(self, i):
        s = dict(self.base.sample(i))
        for d in range(1, len(self.base)):
            other = self.base.sample((i + d) % len(self.base))
            if other["concept"] != s["concept"]:
                s["image_embeds"] = other["image_embeds"]
                return s
        raise ValueError("the set has one concept only: nothing to swap with")


def learn(work: Path, steps: int = 250, pretrain_steps: int = 300, count: int = 60, seed: int = 0,
          lr: float = 3e-3, verbose: bool = True) -> dict:
    t0 = time.perf_counter()
    den = pretrained_denoiser(work, pretrain_steps, seed)
    t_den = time.perf_counter() - t0
    data = InMemoryDataset(make_samples(count, seed=seed))
    train_idx, val_idx = split_validation(len(data), 0.2, seed)
    train_set, val_set = Subset(data, train_idx), Subset(data, val_idx)
    torch.manual_seed(seed + 1)
    task = UMMTask(UMMProjector(TOY_PROJECTOR), den)
    untrained = evaluate(task, val_set, 16)
    config = TrainConfig(steps=steps, batch_size=16, lr=lr, warmup_iters=20, checkpoint_every=0,
                         val_every=max(1, steps // 5), log_every=10, seed=seed)
    t1 = time.perf_counter()
    result = train(task, train_set, config, work / "umm-run", val_set=val_set, resume=False)
    t_train = time.perf_counter() - t1
    trained = evaluate(task, val_set, 16)
    swapped = evaluate(task, SwappedEmbeds(val_set), 16)
    out = {"untrained_val_loss": untrained, "trained_val_loss": trained, "swapped_embeds_val_loss": swapped,
           "steps": result.step, "train_samples": len(train_set), "held_out_samples": len(val_set),
           "denoiser_seconds": round(t_den, 1), "projector_training_seconds": round(t_train, 1),
           "run_dir": str(work / "umm-run")}
    if verbose:
        print(json.dumps(out, indent=1))
    out["task"] = task
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emma_core.train.umm_toy")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("learn")
    p.add_argument("--work", type=Path, default=Path(".cache/umm-toy-learn"))
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    learn(args.work, args.steps, args.pretrain_steps, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
