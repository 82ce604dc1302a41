"""Small training data for tests and demos: folders in the format users make by hand (images + same-name .txt
captions), and samples already in memory."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image


class InMemoryDataset:
    """The trainer's dataset interface (emma_core.train.cache.CachedDataset's len / sample / empty_text) over
    samples already in memory."""

    def __init__(self, samples: list[dict], empty_text: Optional[torch.Tensor] = None):
        self.samples = [dict(s, index=i) for i, s in enumerate(samples)]
        self.empty_text = empty_text

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, index: int) -> dict:
        return self.samples[index]


def face_dataset(folder: Path, count: int = 4, size: int = 256) -> Path:
    """Photos of one face (scikit-image's public-domain astronaut, mirrored and re-lit) with captions that
    do not name her: the generated insightface packs detect and embed each one."""
    from skimage import data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo = data.astronaut()
    variants = [photo, photo[:, ::-1], np.clip(photo * 0.9, 0, 255).astype(np.uint8),
                np.clip(photo.astype(np.float32) * [1.0, 0.95, 0.9], 0, 255).astype(np.uint8)]
    for i in range(count):
        image = np.ascontiguousarray(variants[i % len(variants)])
        Image.fromarray(image).resize((size, size)).save(folder / f"face_{i}.png")
        (folder / f"face_{i}.txt").write_text("a portrait photo of a person")
    return folder
