"""The world picture: caption + object reference + background patch -> result, one row per demo prompt.

Two makers share it: the evaluation (report.world_picture, ComfyUI's executor in this process, into docs/world
or the build's report folder) and the first run (demo.py, the shipped workflow on the real ComfyUI server, into
out/). The first row is the shipped workflow workflows/emma_world_assembled.json as it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import features as world_features
from . import scene as world

# (caption, object reference (shape, colour, seed), background patch (kind, seed)): each reference shows
# another shape than the caption names, so the picture shows who decides what.
DEMO = (("a circle", ("square", "red", 11), ("stripes", 12)),
        ("a triangle", ("circle", "blue", 13), ("dots", 14)),
        ("a cross", ("triangle", "green", 15), ("checks", 16)),
        ("a square", ("cross", "magenta", 17), ("plain", 18)))


def references(row: int, size: int) -> list[np.ndarray]:
    """The demo row's object reference and background patch, at the size the modules were trained on (their
    encoders' token counts follow it)."""
    _, obj, style = DEMO[row]
    return [world.object_reference(*obj, size), world.background_patch(*style, size)]


def write_references(features_folder: Path, size: int) -> list[tuple[str, str]]:
    """Every demo row's features files under `features_folder` (a models/emma_features folder); returns the names
    Load EMMA Features lists them by, (object, style) per row. Row 0 writes the shipped workflow's own files."""
    from devtools.build_workflows import WORLD_OBJECT_REFERENCE, WORLD_STYLE_REFERENCE

    names = []
    for row in range(len(DEMO)):
        pair = (WORLD_OBJECT_REFERENCE, WORLD_STYLE_REFERENCE) if row == 0 else \
            (f"demo/object-{row}.safetensors", f"demo/style-{row}.safetensors")
        for kind, picture, name in zip(("object", "style"), references(row, size), pair):
            (features_folder / name).parent.mkdir(parents=True, exist_ok=True)
            world_features.write_features(kind, [picture], features_folder / name)
        names.append(pair)
    return names


def compose(results: Sequence, size: int, path: Path, cell: int = 128, note: str = "") -> Path:
    """One PNG: per demo row the object reference, the background patch and the result (PIL images or arrays,
    in DEMO's order), each scaled to `cell` pixels without smoothing, with the prompt written below."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    label, head = 18, 16
    canvas = Image.new("RGB", (3 * cell, head + len(results) * (cell + label) + (label if note else 0)), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("object reference", "background reference", "result")):
        draw.text((col * cell + 4, 2), title, fill=(40, 40, 40), font=font)
    for row, result in enumerate(results):
        caption, obj, style = DEMO[row]
        top = head + row * (cell + label)
        pictures = [Image.fromarray(world.to_uint8(r)) for r in references(row, size)]
        pictures.append(result if isinstance(result, Image.Image) else Image.fromarray(np.asarray(result)))
        for col, picture in enumerate(pictures):
            canvas.paste(picture.convert("RGB").resize((cell, cell), Image.NEAREST), (col * cell, top))
        draw.text((4, top + cell + 2), f'"{caption}"  +  {obj[1]} {obj[0]} reference  +  {style[0]} patch',
                  fill=(30, 30, 30), font=font)
    if note:
        draw.text((4, canvas.height - label + 2), note, fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
