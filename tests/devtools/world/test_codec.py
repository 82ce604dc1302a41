"""The world's VAE: the hand-set TAESD encoder computes exactly the documented cell statistics, and the
decoder starts as their colour inverse."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from devtools.world import scene as world


@pytest.fixture(scope="module")
def codec(comfy_dir):
    from devtools.host import import_comfy

    import_comfy(comfy_dir, builtin_nodes=False)  # TAESD's classes are ComfyUI's own
    from devtools.world import codec

    return codec


def test_encoder_is_exactly_the_cell_statistics(codec):
    pictures = torch.from_numpy(np.stack([world.render(s) for s in world.scenes("codec-test", 16,
                                                                                 world.ALL_COMBINATIONS)]))
    latents = codec.encode(codec.fixed_encoder(), pictures)
    assert latents.shape == (16, 4, 8, 8)
    x = pictures.movedim(-1, 1).double()
    rgb = 4 * (F.avg_pool2d(x, 8) - 0.5)
    lum = x.mean(1, keepdim=True)
    # luminance differences with the conv's zero padding past the right / bottom edge
    dx = F.pad(lum, (0, 1))[..., :, 1:] - lum
    dy = F.pad(lum, (0, 0, 0, 1))[..., 1:, :] - lum
    edge = codec.EDGE_GAIN * F.avg_pool2d(dx.abs() + dy.abs(), 8) + codec.EDGE_BIAS
    assert torch.allclose(latents[:, :3].double(), rgb, atol=1e-5)
    assert torch.allclose(latents[:, 3:].double(), edge, atol=1e-4)
    assert 0.5 < latents.std() < 1.5  # the UNet's latents have about unit scale


def test_initial_decoder_is_the_colour_inverse(codec):
    pictures = torch.from_numpy(np.stack([world.render(s) for s in world.scenes("codec-test", 4)]))
    with torch.no_grad():
        out = codec.decode(codec.initial_decoder(), codec.encode(codec.fixed_encoder(), pictures))
    cells = F.interpolate(F.avg_pool2d(pictures.movedim(-1, 1), 8), scale_factor=8, mode="nearest").movedim(1, -1)
    # the decoder's input clamp (tanh) bends the extremes a little; the rest is the nearest cell colour
    assert (out - cells).abs().max() < 0.06
