"""Small training folders in the format users make by hand (images + same-name .txt captions)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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
