"""Reference augmentation: a few altered views of each reference, encoded once into the feature cache; each
training step reads one of them at random (objective.EMMATask.draw), view 0 being the reference as it is.

With a small set, the reference is often the target picture itself: a module that sees exactly the target's
features learns to copy the picture instead of taking what the reference stands for. Random crops, flips and a
small scale jitter (as IP-Adapter-style trainers do before their image encoder) break that shortcut while
keeping what the module should take (the object, the style). The views are drawn from the item's name, so a
rebuilt cache holds the same views.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import torch
import torch.nn.functional as F

CROP = (0.8, 1.0)     # kept fraction of each side
SCALE = (0.9, 1.1)    # size jitter of the kept part
FLIP = 0.5


def _generator(name: str, view: int) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{name}/{view}".encode()).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def augmented_view(image: torch.Tensor, mask: Optional[torch.Tensor], g: torch.Generator
                   ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One view of image [1, H, W, C] (and its mask [1, H, W], transformed alike)."""
    _, h, w, _ = image.shape
    ch, cw = max(1, round(h * _uniform(g, *CROP))), max(1, round(w * _uniform(g, *CROP)))
    top = int(torch.randint(0, h - ch + 1, (), generator=g))
    left = int(torch.randint(0, w - cw + 1, (), generator=g))
    flip = float(torch.rand((), generator=g)) < FLIP
    scale = _uniform(g, *SCALE)
    size = (max(1, round(ch * scale)), max(1, round(cw * scale)))

    def apply(x: torch.Tensor) -> torch.Tensor:  # [1, C, H, W]
        x = x[:, :, top:top + ch, left:left + cw]
        if flip:
            x = x.flip(-1)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)

    out = apply(image.movedim(-1, 1)).movedim(1, -1)
    return out, (apply(mask[:, None])[:, 0] if mask is not None else None)


def reference_views(image: torch.Tensor, mask: Optional[torch.Tensor], count: int, name: str
                    ) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """[(image, mask)]: the reference as it is, then `count` augmented views drawn from `name`."""
    return [(image, mask)] + [augmented_view(image, mask, _generator(name, v)) for v in range(1, count + 1)]
