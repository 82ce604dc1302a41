"""The world's fixed reference encoders and their features files (what Load EMMA Features reads)."""
import numpy as np
import torch

from devtools.world import features, scene as world
from emma_core.features_file import load_features


def test_object_features_are_cell_statistics_with_a_whole_picture_token():
    ref = world.object_reference("square", "red", 1)
    f = features.object_features([ref, world.object_reference("circle", "blue", 2)])
    assert f.kind == "clip_tokens" and f.tensors["hidden"].shape == (2, 65, 6) and f.tensors["embeds"].shape == (2, 6)
    cell = ref[8:16, 16:24].reshape(-1, 3)
    assert torch.allclose(f.tensors["hidden"][0, 1 + 1 * 8 + 2], torch.from_numpy(
        np.concatenate([cell.mean(0), cell.std(0)])).float(), atol=1e-6)
    assert torch.equal(f.tensors["hidden"][:, 0], f.tensors["embeds"])


def test_style_features_do_not_depend_on_the_pattern_phase():
    kinds = {}
    for kind in world.BACKGROUNDS:
        a = features.style_features([world.background(kind, (0, 0))[..., None].repeat(3, -1)]).tensors["embeds"]
        b = features.style_features([world.background(kind, (1, 1))[..., None].repeat(3, -1)]).tensors["embeds"]
        assert torch.allclose(a, b, atol=1e-5), kind  # float noise of the FFT, x64 by the gain
        kinds[kind] = a
    # and tell the patterns apart, at the scale of the object features (v1's raw magnitudes were ~0.01)
    for x in world.BACKGROUNDS:
        for y in world.BACKGROUNDS:
            if x < y:
                assert (kinds[x] - kinds[y]).abs().max() > 0.3, (x, y)
    patches = features.style_features([world.background_patch(k, i) for k in world.BACKGROUNDS for i in range(5)])
    spread = patches.tensors["embeds"][:, :-2].std(0)  # the features that carry the pattern vary at order 1
    assert 0.5 < float(spread.max()) < 3, spread.max()


def test_features_files_name_their_encoder(tmp_path):
    refs = [world.background_patch("dots", i) for i in range(3)]
    path = features.write_features("style", refs, tmp_path / "style-ref.safetensors")
    loaded, meta = load_features(str(path))
    assert loaded.kind == "style" and loaded.tensors["embeds"].shape == (3, 66)
    assert meta["encoder"] == features.STYLE_ENCODER and "not CLIP" in meta["encoder"]
    assert loaded.encoder == features.STYLE_ENCODER
    assert meta["thumbnail"]  # a small PNG of the first reference, for training previews
