"""Sample pictures while a module trains, as kohya or OneTrainer users expect: the same prompts, references
and seeds at every preview, so the grid shows what the training steps change.

One row per preview item: the reference the features came from (when a picture of it is known), the picture
the prompt gives WITH the module, and the same seed WITHOUT it (text only). The context of both comes from
the task's own `context` (the assembled gated residual inference uses); sampling is DDIM (eta 0) on SD1.5's
DDPM timesteps with classifier-free guidance against the empty prompt, as ELLA samples.

    items = [PreviewItem(text_features, features, seed, caption, reference_picture), ...]
    grid = preview_grid(task, items, decode, latent_shape=(4, 8, 8))   # PIL image
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..adapters import Features

Decode = Callable[[torch.Tensor], torch.Tensor]
"""latents in model space [B, C, h, w] -> pictures [B, H, W, 3] in [0, 1] (ComfyUI's IMAGE layout)."""


@dataclass
class PreviewItem:
    text: torch.Tensor                 # [N, D] T5 features of the caption
    features: Features                 # batch 1
    seed: int
    caption: str = ""
    reference: Optional[object] = None  # PIL image of what the features came from, if known


@torch.no_grad()
def sample_latents(task, items: Sequence[PreviewItem], latent_shape: tuple[int, ...], keep_condition: bool,
                   steps: int = 20, cfg: float = 5.0) -> torch.Tensor:
    """DDIM from each item's own seed; [len(items), *latent_shape]."""
    device = task.device
    alphas = task.schedule.alphas_cumprod.to(device)
    noise = [torch.randn(latent_shape, generator=torch.Generator().manual_seed(int(item.seed))) for item in items]
    x = torch.stack(noise).to(device)
    n = len(items)
    texts = [item.text.to(device) for item in items]
    empty = [task.empty_text.to(device)] * n
    features = Features(items[0].features.kind, {
        name: torch.cat([item.features.tensors[name] for item in items]).to(device)
        for name in items[0].features.tensors})
    keep = torch.full((n,), keep_condition, dtype=torch.bool, device=device)
    drop = torch.zeros(n, dtype=torch.bool, device=device)
    timesteps = torch.linspace(task.schedule.steps - 1, 0, steps).round().long()
    for k, t in enumerate(timesteps.tolist()):
        tt = torch.full((n,), t, dtype=torch.long, device=device)
        cond = task.denoiser(x, tt, task.context(texts, tt, features, keep)).float()
        uncond = task.denoiser(x, tt, task.context(empty, tt, features, drop)).float()
        eps = uncond + cfg * (cond - uncond)
        a = alphas[t]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        a_next = alphas[timesteps[k + 1]] if k + 1 < len(timesteps) else torch.ones((), device=device)
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


def _to_pil(picture: torch.Tensor):
    from PIL import Image

    array = (picture.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(array)


def preview_grid(task, items: Sequence[PreviewItem], decode: Decode, latent_shape: tuple[int, ...],
                 steps: int = 20, cfg: float = 5.0, cell: int = 128):
    """PIL image: a row per item, columns reference | with the module | text only, caption underneath."""
    from PIL import Image, ImageDraw, ImageFont

    was_training = task.training
    task.eval()
    try:
        with_module = decode(sample_latents(task, items, latent_shape, True, steps, cfg))
        text_only = decode(sample_latents(task, items, latent_shape, False, steps, cfg))
    finally:
        task.train(was_training)
    font = ImageFont.load_default()
    label = 14
    header = 16
    grid = Image.new("RGB", (3 * cell, header + len(items) * (cell + label)), "white")
    draw = ImageDraw.Draw(grid)
    for col, title in enumerate(("reference", "with the module", "text only")):
        draw.text((col * cell + 4, 2), title, fill=(40, 40, 40), font=font)
    for row, item in enumerate(items):
        top = header + row * (cell + label)
        pictures = [item.reference, _to_pil(with_module[row]), _to_pil(text_only[row])]
        for col, picture in enumerate(pictures):
            if picture is None:
                draw.text((col * cell + 4, top + cell // 2), "(features file)", fill=(120, 120, 120), font=font)
                continue
            grid.paste(picture.convert("RGB").resize((cell, cell), Image.NEAREST), (col * cell, top))
        draw.text((4, top + cell), item.caption[:3 * cell // 6], fill=(40, 40, 40), font=font)
    return grid


def thumbnail_b64(picture, size: int = 96) -> str:
    """A small PNG of `picture` (PIL) as base64 text: features files carry one in their metadata so that a
    preview can show the reference the features came from."""
    picture = picture.convert("RGB")
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_from_b64(text: str):
    from PIL import Image

    try:
        return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")
    except (ValueError, OSError):
        return None


@dataclass
class PreviewSetup:
    """What a front end gives the trainer to draw previews: how to decode latents, and where to write."""

    decode: Decode
    dataset_dir: Optional[str] = None   # to show the reference pictures
    count: int = 4
    steps: int = 20
    cfg: float = 5.0
    on_image: Optional[Callable[[int, object], None]] = None  # (step, PIL grid): e.g. the node's preview


def reference_picture(item):
    """The picture a dataset item's condition features come from (PIL), or its features file's thumbnail."""
    from PIL import Image

    from ..features_file import load_features

    if item.has_features_file:
        try:
            _, meta = load_features(str(item.reference))
        except ValueError:
            return None
        return thumbnail_from_b64(meta["thumbnail"]) if meta.get("thumbnail") else None
    with Image.open(item.condition_source) as picture:
        return picture.convert("RGB")


def preview_items(data, indices: Sequence[int], setup: PreviewSetup, seed: int = 0) -> list[PreviewItem]:
    """Preview items from a CachedDataset: its first `setup.count` samples of `indices` (held-out ones when
    the front end passes those), each with a fixed seed."""
    items_by_name = {}
    if setup.dataset_dir:
        from .dataset import scan_dataset

        items_by_name = {item.name: item for item in scan_dataset(setup.dataset_dir).items}
    out = []
    for n, index in enumerate(list(indices)[:setup.count]):
        sample = data.sample(index)
        features = Features(data.feature_kind(), {k: v[None] for k, v in sample["features"].items()})
        name = data.names[index]
        item = items_by_name.get(name)
        out.append(PreviewItem(sample["text"], features, seed * 1000 + n, data.entries[index].get("caption", ""),
                               reference_picture(item) if item is not None else None))
    return out
