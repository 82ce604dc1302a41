"""EMMA module: adapters per feature kind, the .safetensors file (metadata, atomic save, strict load) and
the clear errors for files and features of another kind."""
import functools
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from emma_core import atomic
from emma_core.adapters import Features
from emma_core.ella import ELLAConfig
from emma_core.ella_file import load_ella
from emma_core.emma_module import EMMAConfig, EMMAModule, load_module, module_from_state_dict, save_module
from emma_core.state_dict import WeightsFileError, expected_shapes
from reference import adapter_tokens, realistic_state_dict


def face_features(batch=1, seed=0):
    return Features("face", {"embedding": torch.randn(batch, 512, generator=torch.Generator().manual_seed(seed))})


def clip_features(batch=1, seed=0, mask=None):
    g = torch.Generator().manual_seed(seed)
    tensors = {"hidden": torch.randn(batch, 257, 1280, generator=g), "embeds": torch.randn(batch, 1024, generator=g)}
    if mask is not None:
        tensors["mask"] = mask
    return Features("clip_tokens", tensors)


def style_features(batch=1, seed=0):
    return Features("style", {"embeds": torch.randn(batch, 1024, generator=torch.Generator().manual_seed(seed))})


@functools.lru_cache(maxsize=None)
def trained(modality, seed, gate_scale=1.0):
    """A module with realistic weights (65 M parameters, ~1 s to make: cached; tests must not modify it)."""
    with torch.device("meta"):
        module = EMMAModule(EMMAConfig(modality, gate_scale=gate_scale), ella_sha256="ab" * 32,
                            training_steps=200_000)
    module.load_state_dict(realistic_state_dict(expected_shapes(module), seed, (0.5, -0.3), gain=1.0), assign=True)
    return module.eval().requires_grad_(False)


@pytest.mark.parametrize("modality, features, kind, tokens", [
    ("face", face_features, "face", 4),
    ("object", clip_features, "clip_tokens", 258),
    ("portrait", clip_features, "clip_tokens", 258),
    ("style", style_features, "style", 4),
])
def test_adapters_match_the_notes(modality, features, kind, tokens):
    module = trained(modality, seed=1)
    assert module.config.feature_kind == kind and module.config.num_tokens == tokens
    assert len(module.branch) == 6
    f = features(batch=2)
    with torch.no_grad():
        ours = module.condition_tokens(f)
    assert ours.shape == (2, tokens, 768)
    expected = adapter_tokens(module.state_dict(), kind, f.tensors)
    assert torch.allclose(ours.double(), expected, atol=1e-5, rtol=0)


def test_object_mask_weights_patch_tokens_only():
    module = trained("object", seed=1)
    mask = torch.zeros(1, 256)
    mask[0, :100] = 1.0
    mask[0, 100:110] = 0.5
    with torch.no_grad():
        plain = module.condition_tokens(clip_features())
        masked = module.condition_tokens(clip_features(mask=mask))
        ones = module.condition_tokens(clip_features(mask=torch.ones(1, 256)))
    assert masked.shape == plain.shape == (1, 258, 768)
    assert torch.equal(ones, plain)
    assert torch.equal(masked[:, 0], plain[:, 0]) and torch.equal(masked[:, -1], plain[:, -1])  # CLS, global
    assert torch.equal(masked[:, 1:101], plain[:, 1:101])
    assert torch.allclose(masked[:, 101:111], plain[:, 101:111] * 0.5)
    assert torch.count_nonzero(masked[:, 111:257]) == 0


@pytest.mark.parametrize("modality, features, fragments", [
    ("face", clip_features, ["expects 'face' features (embedding [B, 512])",
                             "got 'clip_tokens' features (hidden [1, 257, 1280], embeds [1, 1024])"]),
    ("object", face_features, ["expects 'clip_tokens' features (hidden [B, 257, 1280], embeds [B, 1024])",
                               "got 'face' features (embedding [1, 512])"]),
    ("style", lambda: Features("style", {"embeds": torch.zeros(1, 768)}),
     ["expects 'style' features (embeds [B, 1024])", "'embeds' is [1, 768], expected [B, 1024]"]),
    ("object", lambda: clip_features(mask=torch.ones(1, 255)), ["'mask' is [1, 255], expected [B, 256]"]),
])
def test_wrong_features_name_expected_and_found(modality, features, fragments):
    module = EMMAModule(EMMAConfig(modality))
    with pytest.raises(ValueError) as info:
        module.condition_tokens(features())
    for fragment in fragments:
        assert fragment in str(info.value)


def test_config_validation():
    with pytest.raises(ValueError, match="needs a feature kind"):
        EMMAConfig("custom")
    assert EMMAConfig("custom", feature_kind="style").num_tokens == 4
    with pytest.raises(ValueError, match="unknown EMMA modality"):
        EMMAConfig("video")
    with pytest.raises(ValueError, match="blocks=4"):
        EMMAConfig("face", blocks=4)
    small = ELLAConfig(width=64, layers=2, heads=4, time_embed_dim=32, num_latents=8, input_dim=16)
    config = EMMAConfig("face", feature_dims={"embedding": (16,)}, ella=small)
    assert config.blocks == 2  # one AGPR block after each of the connector's PR blocks
    module = EMMAModule(config)
    assert len(module.branch) == 2 and module.condition_tokens(
        Features("face", {"embedding": torch.randn(1, 16)})).shape == (1, 4, 64)


def test_save_load_round_trip_is_exact_with_metadata(tmp_path):
    module = trained("portrait", seed=1, gate_scale=0.75)
    path = tmp_path / "emma-portrait.safetensors"
    save_module(module, str(path))
    loaded = load_module(str(path))
    assert loaded.config == module.config
    assert loaded.ella_sha256 == "ab" * 32 and loaded.training_steps == 200_000
    mine, theirs = module.state_dict(), loaded.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)

    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata == {
        "format": "emma-module", "format_version": "2", "modality": "portrait", "feature_kind": "clip_tokens",
        "feature_dims": json.dumps({"hidden": [257, 1280], "embeds": [1024]}), "token_count": "258",
        "blocks": "6", "gate_scale": "0.75", "ella_sha256": "ab" * 32, "training_steps": "200000",
        "ella_config": json.dumps({"heads": 8, "input_dim": 2048, "layers": 6, "num_latents": 64,
                                   "time_channels": 320, "time_embed_dim": 768, "width": 768}),
        "feature_encoder": "",
    }
    # fp16 files load back into the compute dtype.
    save_module(module, str(path), dtype=torch.float16)
    assert load_module(str(path)).branch[0].separable_gate.weight.dtype == torch.float32


def test_save_is_atomic_when_the_write_crashes(tmp_path, monkeypatch):
    path = tmp_path / "emma-face.safetensors"
    save_module(trained("face", seed=1), str(path))
    good = path.read_bytes()

    write_atomic = atomic.write_atomic

    def crashing_write_atomic(target, write, binary=True):
        def crash(handle):
            class Half:  # the real writer's bytes, cut off half way
                def write(self, data):
                    handle.write(data[: len(data) // 2])
                    raise OSError("disk full")
            write(Half())
        write_atomic(target, crash, binary)

    monkeypatch.setattr(atomic, "write_atomic", crashing_write_atomic)
    with pytest.raises(OSError, match="disk full"):
        save_module(trained("style", seed=1), str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [path.name]  # no temp file left behind
    assert isinstance(load_module(str(path)), EMMAModule)


def test_loader_refuses_other_kinds_of_file(tmp_path):
    ella = tmp_path / "ella-sd1.5-tsc-t5xl.safetensors"
    save_file({"time_embedding.linear_1.weight": torch.zeros(768, 320), "connector.latents": torch.zeros(64, 768)},
              str(ella))
    with pytest.raises(WeightsFileError, match="this is an ELLA connector, load it with Load ELLA Connector"):
        load_module(str(ella))
    save_file({"connector.latents": torch.zeros(64, 768)}, str(ella), metadata={"format": "pt"})
    with pytest.raises(WeightsFileError, match="this is an ELLA connector, load it with Load ELLA Connector"):
        load_module(str(ella))

    good = tmp_path / "face.safetensors"
    save_module(trained("face", seed=1), str(good), dtype=torch.float16)
    with pytest.raises(WeightsFileError, match="is an EMMA face module"):  # and the other way round
        load_ella(str(good))

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(WeightsFileError, match="corrupt.safetensors could not be read"):
        load_module(str(corrupt))


@pytest.mark.parametrize("edit_tensors, edit_metadata, fragment", [
    (lambda t: t.pop("branch.5.global_gate_ffn"), None, "missing key 'branch.5.global_gate_ffn' (expected shape [])"),
    (lambda t: t.__setitem__("branch.6.separable_gate.bias", torch.zeros(2)), None,
     "unexpected key 'branch.6.separable_gate.bias'"),
    (lambda t: t.__setitem__("adapter.proj.weight", torch.zeros(3072, 768)), None,
     "key 'adapter.proj.weight' has shape [3072, 768], expected shape [3072, 512]"),
    (None, lambda m: m.__setitem__("format_version", "3"), "format version '3'"),
    (None, lambda m: m.pop("ella_config"), "without the metadata ['ella_config']"),
    (None, lambda m: m.__setitem__("ella_config", '{"width": 768, "depth": 6}'), "unknown ELLA config keys ['depth']"),
    (None, lambda m: m.__setitem__("ella_config", json.dumps(ELLAConfig(layers=2).as_dict())),
     "an EMMA module has one AGPR block after each of its ELLA connector's 2 PR blocks; got blocks=6"),
    (None, lambda m: m.__setitem__("feature_dims", "not json"), "invalid EMMA metadata"),
    (None, lambda m: m.__setitem__("token_count", "16"),
     "key 'adapter.proj.weight' has shape [3072, 512], expected shape [12288, 512]"),
    (None, lambda m: m.__setitem__("feature_dims", '{"hidden": [257, 1280], "embeds": [1024]}'),
     "invalid EMMA metadata"),
    (None, lambda m: m.pop("token_count"), "without the metadata ['token_count']"),
    (None, lambda m: m.__setitem__("format", "lora"), "is a 'lora' file, not an EMMA module"),
])
def test_loader_names_what_is_wrong(edit_tensors, edit_metadata, fragment):
    module = trained("face", seed=1)
    tensors, metadata = dict(module.state_dict()), module.metadata()
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    with pytest.raises(WeightsFileError) as info:
        module_from_state_dict(tensors, metadata, source="/models/emma/face.safetensors")
    assert fragment in str(info.value)
    assert "face.safetensors" in str(info.value)


def test_version_1_files_still_load_as_modules_of_the_released_connector(tmp_path):
    module = trained("face", seed=2)
    metadata = module.metadata()
    del metadata["ella_config"], metadata["feature_encoder"]
    metadata["format_version"] = "1"
    path = tmp_path / "old-face.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path), metadata=metadata)
    loaded = load_module(str(path))
    assert loaded.config == module.config and loaded.config.ella == ELLAConfig()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.state_dict().values()))


def test_a_module_for_a_smaller_connector_round_trips_with_its_configuration(tmp_path):
    small = ELLAConfig(width=96, layers=3, heads=4, time_embed_dim=48, num_latents=8, input_dim=24)
    torch.manual_seed(3)
    module = EMMAModule(EMMAConfig("style", feature_dims={"embeds": (20,)}, ella=small),
                        feature_encoder="world-spectrum-v1 (fixed Fourier magnitudes, not CLIP)")
    path = tmp_path / "small-style.safetensors"
    save_module(module, str(path))
    loaded = load_module(str(path))
    assert loaded.config == module.config and loaded.config.ella == small
    assert loaded.feature_encoder == "world-spectrum-v1 (fixed Fourier magnitudes, not CLIP)"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.state_dict().values()))
