"""The condition modules' training sets: world pictures, captions that leave one attribute to the reference,
and the reference's features file per picture (the dataset format of docs/training.md).

- object module: the caption names the shape (and the background, half the time) but never the colour; the
  reference is the object alone on the neutral ground, in the picture's colour. Half the references show
  another shape than the picture, so the module learns that the reference gives the colour and the text the
  shape (the evaluation asks exactly that of it, with references of the other shape in half the cases).
- style module: the caption names the shape (and the colour, half the time) but never the background; the
  reference is a patch of the picture's ground at another phase.
The two modules never see each other's data and are trained apart on the frozen base.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from . import features as world_features
from . import scene as world


def item(kind: str, scene: world.Scene, size: int = world.SIZE, object_side: tuple = world.OBJECT_SIDE):
    """(picture, caption, reference picture) of one training item."""
    g = world.rng(f"{kind} item", scene.seed)
    if kind == "object":
        caption = world.caption(scene, "shape background" if g.uniform() < 0.5 else "shape")
        others = [s for s in world.SHAPES if s != scene.shape]
        shape = scene.shape if g.uniform() < 0.5 else others[int(g.integers(len(others)))]
        reference = world.object_reference(shape, scene.colour, int(g.integers(2**48)), size)
    elif kind == "style":
        caption = world.caption(scene, "shape colour" if g.uniform() < 0.5 else "shape")
        reference = world.background_patch(scene.background, int(g.integers(2**48)), size)
    else:
        raise ValueError(f"unknown module kind {kind!r}")
    return world.render(scene, size, object_side), caption, reference


def write_dataset(folder: Path, kind: str, count: int, size: int = world.SIZE,
                  object_side: tuple = world.OBJECT_SIDE) -> Path:
    """Write (or reuse) the folder: NNNNN.png, NNNNN.txt, NNNNN_ref.safetensors."""
    folder = Path(folder)
    stamp = folder / "dataset.json"
    want = {"kind": kind, "count": count, "size": size, "version": 1, "encoder": world_features.ENCODERS[kind][1]}
    if tuple(object_side) != world.OBJECT_SIDE:  # the stamps of datasets written before the field stay valid
        want["object_side"] = list(object_side)
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(world.scenes(f"{kind}-train", count, world.SEEN)):
        picture, caption, reference = item(kind, scene, size, object_side)
        stem = folder / f"{index:05d}"
        Image.fromarray(world.to_uint8(picture)).save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(caption)
        world_features.write_features(kind, [reference], folder / f"{index:05d}_ref.safetensors")
    stamp.write_text(json.dumps(want))
    return folder
