"""A generated folder for the curation tests: each file is there for one filter (names say which)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance


def picture(seed: int, size) -> Image.Image:
    """A smooth random picture (low frequencies, so its perceptual hash is stable under resizing)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    return small.resize(size, Image.BICUBIC)


SIZES = {  # name: (width, height)
    "ok1.png": (640, 640), "ok2.png": (800, 600), "ok3.jpg": (512, 1024),   # aspect 0.5: on the boundary, kept
    "small1.png": (500, 700), "small2.png": (300, 300), "ok1_thumb.png": (256, 256),
    "wide.png": (1200, 520), "tall.png": (520, 1100),
    "orig.png": (1024, 768),
}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for n, (name, size) in enumerate(SIZES.items()):
        seed = 1 if name == "ok1_thumb.png" else 100 + n
        picture(seed, size).save(tmp_path / name, quality=90)
        (tmp_path / name).with_suffix(".txt").write_text(f"caption of {name}")
    orig = Image.open(tmp_path / "orig.png")
    orig.resize((800, 600), Image.LANCZOS).save(tmp_path / "copy.jpg", quality=80)           # resized + JPEG
    ImageEnhance.Brightness(orig.resize((1000, 750))).enhance(1.08).save(tmp_path / "copy2.png")  # brighter
    picture(1, (640, 640)).save(tmp_path / "ok1.png")                                         # ok1_thumb's source
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    picture(7, (640, 640)).convert("L").save(tmp_path / "ok1_mask.png")                      # a mask: not an image
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path
