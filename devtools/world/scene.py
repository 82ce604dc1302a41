"""The world's pictures: one coloured object on a grey patterned ground, drawn deterministically from a seed.

Attributes (docs/world.md):
- shape: circle, square, triangle (apex up), cross (a plus sign);
- colour: six hues 60 degrees apart, saturated (the ground is grey, so colour alone says where the object is);
- background: plain, stripes (vertical), dots, checks: grey patterns with a 16 px period whose phase moves in
  steps of 8 px, the cell size of the world's VAE;
- jitter: object size 42-56 % of the picture, its centre within +-1/16 of the side (+-4 px at 64 px) of the
  picture's centre, hue +-6 degrees,
  saturation and value +-0.05.

References, for EMMA's condition modules:
- object reference: the object alone, centred, on a neutral mid-grey ground (its own size jitter);
- background patch: the ground alone, at another phase (what a style reference is in this world).

A Scene is (shape, colour, background, seed); everything about its picture follows from the seed.
"""
from __future__ import annotations

import colorsys
import hashlib
import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")
HUES = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)
BACKGROUNDS = ("plain", "stripes", "dots", "checks")
PERIOD_FRACTION = 0.25            # pattern period / picture side (16 px at 64 px)
GREY_LOW, GREY_HIGH, GREY_PLAIN, GREY_NEUTRAL = 0.45, 0.85, 0.70, 0.55
OBJECT_SIDE = (0.42, 0.56)        # the object's width/height, as a fraction of the picture side (drawn uniformly)
# How far the object's centre strays from the picture's, as a fraction of the side. Centred objects, because with the
# object anywhere the small base must choose place and outline together at high noise and averages them into a
# blob (shape 0.35 at 1 000 base steps against 0.63 centred, docs/world.md "Five more levers").
PLACEMENT_JITTER = 1 / 16
CROSS_ARM = 0.18                  # half-width of the cross's arms, as a fraction of the object's size

# Combinations no training set ever shows (every stage draws around them): 3 per shape, each colour twice,
# each background three times, so the evaluation can ask for pictures of combinations never seen together.
HELD_OUT = tuple((SHAPES[s], COLOURS[(3 * s + k) % 6], BACKGROUNDS[(s + k) % 4])
                 for s in range(4) for k in range(3))
ALL_COMBINATIONS = tuple(itertools.product(SHAPES, COLOURS, BACKGROUNDS))
SEEN = tuple(c for c in ALL_COMBINATIONS if c not in set(HELD_OUT))


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    seed: int

    @property
    def combination(self) -> tuple[str, str, str]:
        return self.shape, self.colour, self.background


def rng(*key) -> np.random.Generator:
    """A generator that depends only on `key` (the same numbers on every machine and Python)."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little"))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xx, yy


def background(kind: str, phase: tuple[int, int], size: int = SIZE) -> np.ndarray:
    """[size, size] grey levels of a pattern; `phase` counts half-periods (0 or 1) along x and y."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    xx, yy = _grid(size)
    period = size * PERIOD_FRACTION
    xx, yy = xx + phase[0] * period / 2, yy + phase[1] * period / 2
    if kind == "plain":
        return np.full((size, size), GREY_PLAIN, np.float32)
    if kind == "stripes":
        return np.where((xx % period) < period / 2, GREY_HIGH, GREY_LOW).astype(np.float32)
    if kind == "checks":
        return np.where(((xx // (period / 2)) + (yy // (period / 2))) % 2 == 0, GREY_HIGH, GREY_LOW).astype(np.float32)
    # a dot inside one 8 px cell of each period, so the VAE's cell means carry the pattern
    dx, dy = (xx % period) - period / 4, (yy % period) - period / 4
    return np.where(dx * dx + dy * dy < (0.22 * period) ** 2, GREY_LOW, GREY_HIGH).astype(np.float32)


def shape_mask(shape: str, centre: tuple[float, float], side: float, size: int = SIZE) -> np.ndarray:
    """Boolean [size, size]: the object of width/height `side` (pixels) centred at `centre`."""
    xx, yy = _grid(size)
    u, v = (xx - centre[0]) / side, (yy - centre[1]) / side  # the object spans [-0.5, 0.5]
    if shape == "circle":
        return u * u + v * v < 0.25
    if shape == "square":
        return (np.abs(u) < 0.5) & (np.abs(v) < 0.5)
    if shape == "triangle":
        return (v > -0.5) & (v < 0.5) & (np.abs(u) < (v + 0.5) / 2)
    if shape == "cross":
        return (((np.abs(u) < 0.5) & (np.abs(v) < CROSS_ARM)) | ((np.abs(v) < 0.5) & (np.abs(u) < CROSS_ARM)))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def object_rgb(colour: str, g: np.random.Generator) -> np.ndarray:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known: {COLOURS}")
    hue = (HUES[COLOURS.index(colour)] + g.uniform(-6, 6)) % 360
    return np.array(colorsys.hsv_to_rgb(hue / 360, 0.85 + g.uniform(-0.05, 0.05), 0.9 + g.uniform(-0.05, 0.05)),
                    np.float32)


def render(scene: Scene, size: int = SIZE, object_side: tuple[float, float] = OBJECT_SIDE) -> np.ndarray:
    """The scene's picture, [size, size, 3] float32 in [0, 1]; `object_side` only for measuring other worlds
    (ceiling.py): every stage draws the world's own."""
    g = rng("scene", scene.seed)
    phase = tuple(int(p) for p in g.integers(0, 2, 2))
    picture = np.repeat(background(scene.background, phase, size)[..., None], 3, axis=-1)
    side = g.uniform(*object_side) * size
    margin = side / 2 + 2
    # The draw that once placed the object anywhere inside, shrunk towards the middle: the same random numbers,
    # so every other attribute of a seed's picture (and its references and captions) stays as it was.
    shrink = PLACEMENT_JITTER * size / (size / 2 - margin)
    centre = tuple(size / 2 + (g.uniform(margin, size - margin) - size / 2) * shrink for _ in range(2))
    picture[shape_mask(scene.shape, centre, side, size)] = object_rgb(scene.colour, g)
    return picture


def object_reference(shape: str, colour: str, seed: int, size: int = SIZE) -> np.ndarray:
    """The object alone, centred, on the neutral grey ground: the object module's reference picture."""
    g = rng("object reference", seed)
    picture = np.full((size, size, 3), GREY_NEUTRAL, np.float32)
    side = g.uniform(0.5, 0.62) * size
    picture[shape_mask(shape, (size / 2, size / 2), side, size)] = object_rgb(colour, g)
    return picture


def background_patch(kind: str, seed: int, size: int = SIZE) -> np.ndarray:
    """The ground alone at a random phase: the style module's reference picture."""
    g = rng("background patch", seed)
    return np.repeat(background(kind, tuple(int(p) for p in g.integers(0, 2, 2)), size)[..., None], 3, axis=-1)


def scenes(split: str, count: int, combinations=SEEN) -> Iterator[Scene]:
    """`count` scenes of one split, attributes uniform over `combinations`, seeds unique to the split."""
    for index in range(count):
        g = rng("split", split, index)
        shape, colour, back = combinations[int(g.integers(len(combinations)))]
        yield Scene(shape, colour, back, seed=int.from_bytes(hashlib.sha256(f"{split}/{index}".encode())
                                                              .digest()[:6], "little"))


# ---- captions ---------------------------------------------------------------------------------------------
BACKGROUND_WORDS = {"plain": "plain", "stripes": "striped", "dots": "dotted", "checks": "checked"}
FULL = ("a {colour} {shape} on a {background} background", "{background} background with a {colour} {shape}",
        "a picture of a {colour} {shape}, {background} background", "a {background} backdrop behind a {colour} {shape}")
SHAPE_COLOUR = ("a {colour} {shape}", "a picture of a {colour} {shape}")
SHAPE_BACKGROUND = ("a {shape} on a {background} background", "{background} background with a {shape}")
SHAPE_ONLY = ("a {shape}", "a picture of a {shape}")
TEMPLATES = {"full": FULL, "shape colour": SHAPE_COLOUR, "shape background": SHAPE_BACKGROUND,
             "shape": SHAPE_ONLY}


def caption(scene: Scene, names: str = "full", variant: int | None = None) -> str:
    """A caption of `scene` naming the attributes of `names` (a key of TEMPLATES); the template is chosen by
    the scene's seed unless `variant` says which."""
    templates = TEMPLATES[names]
    index = rng("caption", scene.seed, names).integers(len(templates)) if variant is None else variant
    return templates[int(index) % len(templates)].format(shape=scene.shape, colour=scene.colour,
                                                          background=BACKGROUND_WORDS[scene.background])


def pretraining_caption(scene: Scene) -> str:
    """Captions of the base's pre-training: the full caption 60 % of the time, else one naming fewer
    attributes (always the shape), so that a prompt may leave colour or background to chance or to a module."""
    u = rng("pretraining names", scene.seed).uniform()
    names = "full" if u < 0.6 else "shape colour" if u < 0.75 else "shape background" if u < 0.9 else "shape"
    return caption(scene, names)


def to_uint8(picture: np.ndarray) -> np.ndarray:
    return (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
