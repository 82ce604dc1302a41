"""EMMA features files: one .safetensors format for every feature kind (face identities, CLIP references)."""
import pytest
import torch
from safetensors.torch import save_file

from emma_core.adapters import Features
from emma_core.features_file import load_features, save_features
from emma_core.state_dict import WeightsFileError


def test_round_trip_keeps_kind_tensors_and_meta(tmp_path):
    face = Features("face", {"embedding": torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)})
    path = save_features(face, str(tmp_path / "sub" / "me.safetensors"), {"name": "me", "images": 3})
    loaded, meta = load_features(path)
    assert loaded.kind == "face" and torch.equal(loaded.tensors["embedding"], face.tensors["embedding"])
    assert meta == {"name": "me", "images": 3}
    assert not list((tmp_path / "sub").glob("*.tmp"))
    clip = Features("clip_tokens", {"hidden": torch.randn(1, 17, 64), "embeds": torch.randn(1, 32),
                                    "mask": torch.rand(1, 16)})
    save_features(clip, path)  # overwriting replaces the file whole
    again, _ = load_features(path)
    assert again.kind == "clip_tokens" and set(again.tensors) == {"hidden", "embeds", "mask"}
    assert loaded.encoder == again.encoder == ""  # made by nobody known: no provenance is invented


def test_what_made_the_features_survives_a_save_and_a_load(tmp_path):
    face = Features("face", {"embedding": torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)},
                    encoder="InsightFace antelopev2 ArcFace")
    loaded, meta = load_features(save_features(face, str(tmp_path / "me.safetensors"), {"name": "me"}))
    assert loaded.encoder == "InsightFace antelopev2 ArcFace"
    assert meta == {"name": "me", "encoder": "InsightFace antelopev2 ArcFace"}


def test_a_crash_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    import emma_core.atomic as atomic

    path = tmp_path / "me.safetensors"
    save_features(Features("style", {"embeds": torch.ones(1, 1024)}), str(path))
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_features(Features("style", {"embeds": torch.zeros(1, 1024)}), str(path))
    assert path.read_bytes() == good and not list(tmp_path.glob("*.tmp"))


def test_wrong_and_damaged_files_are_refused_with_the_reason(tmp_path):
    good = save_features(Features("face", {"embedding": torch.ones(1, 512)}), str(tmp_path / "good.safetensors"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(good, "rb").read()[:-100])
    with pytest.raises(WeightsFileError, match="truncated or corrupt"):
        load_features(str(truncated))
    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(4, 4)}, str(weights))
    with pytest.raises(WeightsFileError, match="not an EMMA features file"):
        load_features(str(weights))
    module = tmp_path / "module.safetensors"
    save_file({"w": torch.zeros(4)}, str(module), metadata={"format": "emma-module"})
    with pytest.raises(WeightsFileError, match="format 'emma-module'"):
        load_features(str(module))
    future = tmp_path / "future.safetensors"
    save_file({"embeds": torch.ones(1, 4)}, str(future),
              metadata={"format": "emma-features", "format_version": "9", "feature_kind": "style"})
    with pytest.raises(WeightsFileError, match="version 9.*update the pack"):
        load_features(str(future))
    unknown = tmp_path / "unknown.safetensors"
    save_file({"x": torch.ones(1, 4)}, str(unknown),
              metadata={"format": "emma-features", "format_version": "1", "feature_kind": "audio"})
    with pytest.raises(WeightsFileError, match="unknown feature kind 'audio'"):
        load_features(str(unknown))
    pickled = tmp_path / "face.pt"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(WeightsFileError, match="only .safetensors"):
        load_features(str(pickled))
