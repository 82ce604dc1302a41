"""The codec's ceiling (devtools/world/ceiling.py): what the reader can read after the VAE alone bounds what any
base can score, so the tool must tell a codec that carries shape from one that does not."""
import pytest


@pytest.fixture(scope="module")
def ceiling(comfy_dir):
    from devtools.host import import_comfy

    import_comfy(comfy_dir, builtin_nodes=False)  # TAESD's classes are ComfyUI's own
    from devtools.world import ceiling

    return ceiling.ceiling


def test_the_ceiling_separates_a_codec_that_keeps_shape_from_one_that_loses_it(ceiling):
    small, world_size = ceiling(32, n=96), ceiling(64, n=96)
    for result in (small, world_size):
        # the pictures themselves read (at 32 px a 13 px circle, nearly always at the same place, aliases: 0.94)
        assert result["pictures"]["shape"]["accuracy"] >= 0.9
        assert result["decoded"]["colour"]["accuracy"] >= 0.95  # cell means keep the hue at any size
        assert {v: x["n"] for v, x in result["decoded"]["shape"]["per_value"].items()} == \
            {"circle": 24, "square": 24, "triangle": 24, "cross": 24}
    # 4 x 4 cells blur the outline away; 8 x 8 keep most of it (docs/world.md: 0.365 and 0.82 on 192 pictures
    # with the untrained decoder and centred objects)
    assert small["decoded"]["shape"]["accuracy"] < 0.5
    assert world_size["decoded"]["shape"]["accuracy"] > 0.7


def test_larger_objects_are_measured_with_the_same_scenes(ceiling):
    from devtools.world import scene as world

    default, explicit = ceiling(48, n=96), ceiling(48, world.OBJECT_SIDE, n=96)
    assert default == explicit  # passing the world's own object size changes nothing
    assert ceiling(48, (0.62, 0.78), n=96)["decoded"]["shape"]["accuracy"] > \
        default["decoded"]["shape"]["accuracy"] + 0.15  # bigger objects span more cells (0.49 -> 0.95 on 96)
