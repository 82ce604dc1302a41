"""The world's pictures and captions: deterministic, held-out combinations never drawn for training, and
captions that name exactly what each use is allowed to name."""
import numpy as np

from devtools.world import modules, scene as world


def test_pictures_are_deterministic_from_the_seed():
    s = next(world.scenes("check", 1))
    assert np.array_equal(world.render(s), world.render(s))
    assert not np.array_equal(world.render(s), world.render(world.Scene(s.shape, s.colour, s.background, s.seed + 1)))
    assert list(world.scenes("check", 5)) == list(world.scenes("check", 5))
    p = world.render(s)
    assert p.shape == (64, 64, 3) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1


def test_the_attributes_are_drawn_as_named():
    for shape, colour, background in [("square", "red", "plain"), ("cross", "blue", "checks")]:
        p = world.render(world.Scene(shape, colour, background, 5))
        chroma = p.max(-1) - p.min(-1)
        obj = chroma > 0.25
        r, g, b = np.median(p[obj], axis=0)
        if colour == "red":
            assert r > 0.7 and g < 0.3 and b < 0.3
        else:
            assert b > 0.7 and r < 0.3 and g < 0.3
        ground = p[~obj].mean(-1)
        assert (ground.std() < 0.01) == (background == "plain")
        area = obj.mean()
        assert 0.1 < area < 0.35


def test_held_out_combinations_are_never_drawn_for_training():
    assert len(world.HELD_OUT) == 12 and not set(world.HELD_OUT) & set(world.SEEN)
    assert len(world.SEEN) + len(world.HELD_OUT) == 4 * 6 * 4
    for split in ("pretrain", "object-train", "style-train"):
        drawn = {s.combination for s in world.scenes(split, 3000, world.SEEN)}
        assert not drawn & set(world.HELD_OUT)
        assert len(drawn) == len(world.SEEN)  # and every seen combination does occur


def test_splits_use_different_seeds():
    seeds = {split: {s.seed for s in world.scenes(split, 500)} for split in
             ("pretrain", "object-train", "style-train", "eval/text only, full caption", "decoder/0")}
    names = list(seeds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not seeds[a] & seeds[b], (a, b)


def test_module_captions_leave_their_attribute_to_the_reference():
    for s in world.scenes("caption-check", 200, world.SEEN):
        _, object_caption, object_ref = modules.item("object", s)
        _, style_caption, style_ref = modules.item("style", s)
        assert s.shape in object_caption and s.colour not in object_caption
        assert s.shape in style_caption and world.BACKGROUND_WORDS[s.background] not in style_caption
        # the object reference is the picture's colour on the neutral grey; the style reference has no object
        assert (style_ref.max(-1) - style_ref.min(-1)).max() < 1e-6
        assert np.isclose(object_ref[0, 0], world.GREY_NEUTRAL).all()
    full = world.caption(world.Scene("triangle", "green", "dots", 1), "full", variant=0)
    assert full == "a green triangle on a dotted background"


def test_a_schedule_s_object_size_reaches_the_module_pictures():
    """shape-48 trains on larger objects (0.80 to 0.90 of the side): the module datasets draw them at that size."""
    s = world.Scene("square", "red", "plain", 11)
    small, _, _ = modules.item("object", s, 48)
    large, caption, _ = modules.item("object", s, 48, (0.80, 0.90))
    area = [((p.max(-1) - p.min(-1)) > 0.25).mean() for p in (small, large)]
    assert area[0] < 0.56 ** 2 + 0.02 and area[1] > 0.80 ** 2 - 0.05
    assert caption == modules.item("object", s, 48)[1]  # only the picture changes
