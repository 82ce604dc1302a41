"""toy_umm's world behind ComfyUI's model interfaces, so the UMM job builder (emma_core/train/umm_job.py) trains
on it exactly as it trains on the checkpoint's MODEL, CLIP, VAE and CLIP Vision; the toy world's dataset folder
(write_umm_dataset); and a small folder with given captions for the tests on the real host (subject_folder).

- ToyCLIP: .tokenize / .encode_from_tokens as ComfyUI's CLIP, a word per token (no start / end tokens), the
  states toy_umm.toy_text_states gives;
- ToyClipVision: .encode_image(IMAGE, crop) -> {"image_embeds"} (toy_umm.toy_image_embed);
- ToyVAE: .encode(IMAGE) (toy_train.toy_encode_image);
- ToyBase: ComfyUI's BaseModel interface (process_latent_in, model_sampling.sigmas, apply_model -> x0) on the
  frozen toy denoiser, with the DDPM timestep of each sigma, so objective.comfy_epsilon_denoiser returns the
  denoiser's own epsilon.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import torch

from devtools import toy_umm
from devtools.toy_train import CONCEPTS, concept_picture, toy_encode_image
from emma_core.train.schedule import scaled_linear_alphas_cumprod


class ToyCLIP:
    tokenizer = SimpleNamespace(clip_l=SimpleNamespace())  # no start / end / pad tokens

    def __init__(self):
        self.words: dict[int, str] = {}

    def tokenize(self, text: str) -> dict:
        ids = []
        for word in text.lower().split():
            token = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
            self.words[token] = word
            ids.append((token, 1.0))
        return {"l": [ids]}

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False):
        words = [self.words[t] for chunk in tokens["l"] for t, _w in chunk]
        states = toy_umm.toy_text_states(words)[None] if words else torch.zeros(1, 1, toy_umm.TEXT_DIM)
        return (states, states.mean(1)) if return_pooled else states


class ToyClipVision:
    def encode_image(self, image: torch.Tensor, crop: bool = True) -> dict:
        return {"image_embeds": torch.stack([toy_umm.toy_image_embed(frame[None]) for frame in image])}


class ToyVAE:
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return toy_encode_image(image)


class ToyBase:
    def __init__(self, denoiser: torch.nn.Module):
        a = scaled_linear_alphas_cumprod()
        self.model_sampling = SimpleNamespace(sigmas=((1 - a) / a).sqrt())
        self.denoiser = denoiser.requires_grad_(False).eval()

    def process_latent_in(self, latents):
        return latents

    def apply_model(self, x_sigma, sigma, c_crossattn):
        s = sigma.view(-1, 1, 1, 1)
        t = (self.model_sampling.sigmas[None, :] - sigma[:, None]).abs().argmin(1)
        eps = self.denoiser(x_sigma / (1 + s ** 2).sqrt(), t, c_crossattn)
        return x_sigma - s * eps


def write_umm_dataset(folder: Path, count: int, seed: int = 0, caption: str = "a photo of thing") -> list[int]:
    """count pictures (concept (5i + seed) % K, as toy_umm.make_samples), each with `caption` and a `_ref.png`:
    another picture of the same concept, the subject picture."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    concepts = []
    for i in range(count):
        k = (i * 5 + seed) % len(CONCEPTS)
        for suffix, jitter in (("", seed * 100_000 + i), ("_ref", seed * 100_000 + 50_000 + i)):
            arr = (concept_picture(k, jitter).numpy() * 255).round().astype("uint8")
            Image.fromarray(arr).save(folder / f"{i:04d}{suffix}.png")
        (folder / f"{i:04d}.txt").write_text(caption)
        concepts.append(k)
    return concepts


def subject_folder(folder: Path, captions: list[str]) -> Path:
    """One toy picture per caption (64 px, for the stand-in models), the first with a `_ref.png` subject picture
    of its own."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, caption in enumerate(captions):
        for suffix, jitter in [("", i)] + ([("_ref", 100 + i)] if i == 0 else []):
            arr = (concept_picture(i % 2, jitter).numpy() * 255).round().astype("uint8")
            Image.fromarray(arr).save(folder / f"{i:02d}{suffix}.png")
        (folder / f"{i:02d}.txt").write_text(caption)
    return folder
