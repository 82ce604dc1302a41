"""The attribute reader grades everything the world measures: it must read held-out world pictures at 0.98 or
better per attribute, also through the blur and noise a generator adds (its rules are fixed, not learned)."""
import numpy as np
import pytest
from scipy import ndimage

from devtools.world import scene as world
from devtools.world.build import SCHEDULES
from devtools.world.reader import read

ATTRIBUTES = ("shape", "colour", "background")


def accuracy(pictures, scenes):
    correct = np.zeros(3)
    for picture, s in zip(pictures, scenes):
        r = read(picture)
        correct += [r.get(a) == want for a, want in zip(ATTRIBUTES, s.combination)]
    return correct / len(scenes)


@pytest.mark.parametrize("size", [world.SIZE, SCHEDULES["full"].size])
@pytest.mark.parametrize("blur, noise", [(0.0, 0.0), (1.0, 0.04), (1.5, 0.05)])
def test_reads_held_out_pictures_at_098_or_better(blur, noise, size):
    scenes = list(world.scenes("reader-test", 400, world.ALL_COMBINATIONS))
    pictures = []
    for s in scenes:
        p = world.render(s, size)
        if blur:
            p = ndimage.gaussian_filter(p, (blur, blur, 0))
        if noise:
            p = np.clip(p + world.rng("reader noise", s.seed).normal(0, noise, p.shape), 0, 1)
        pictures.append(world.to_uint8(p))  # as saved: 8-bit
    assert (accuracy(pictures, scenes) >= 0.98).all(), accuracy(pictures, scenes)


def test_reads_the_references():
    for i, (shape, colour, back) in enumerate(world.ALL_COMBINATIONS[::7]):
        r = read(world.object_reference(shape, colour, i))
        assert (r.shape, r.colour, r.background) == (shape, colour, "plain")
        patch = read(world.background_patch(back, i))
        assert patch.background == back and patch.shape is None and patch.colour is None


def test_a_grey_picture_has_no_object():
    r = read(np.full((64, 64, 3), 0.5, np.float32))
    assert r.shape is None and r.colour is None and r.background == "plain"
