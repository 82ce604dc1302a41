"""UMM core: subject positions, replacement, the projector file (the guidance: tests/nodes/test_umm_nodes.py)."""
import pytest
import torch
from safetensors.torch import save_file

from emma_core.state_dict import WeightsFileError
from emma_core.umm import ProjectorConfig, UMMProjector, find_subject, load_projector, replace_positions, save_projector


def test_find_subject_handles_multi_token_and_repeated_words():
    assert find_subject([1, 5, 6, 9, 5, 6, 2], [5, 6]) == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="subject word 'corgi' does not occur"):
        find_subject([1, 2, 3], [7], "corgi")
    with pytest.raises(ValueError, match="empty"):
        find_subject([1, 2, 3], [])


def test_replace_positions_changes_only_those_rows():
    h_y = torch.randn(2, 10, 8)
    word = torch.randn(1, 8)
    h_u = replace_positions(h_y, [3, 4], word)
    assert torch.equal(h_u[:, [0, 1, 2, 5, 6, 7, 8, 9]], h_y[:, [0, 1, 2, 5, 6, 7, 8, 9]])
    assert torch.equal(h_u[:, 3], word.expand(2, 8)) and torch.equal(h_u[:, 4], word.expand(2, 8))
    assert not torch.equal(h_y[:, 3], h_u[:, 3])  # h_y itself untouched


def test_projector_file_round_trip_and_refusals(tmp_path):
    projector = UMMProjector(ProjectorConfig(image_dim=32, hidden_dim=16, text_dim=8))
    path = tmp_path / "p.safetensors"
    save_projector(projector, str(path), training_steps=12)
    loaded = load_projector(str(path))
    assert loaded.config == projector.config
    x = torch.randn(2, 32)
    assert torch.equal(loaded(x), projector.eval()(x))
    other = tmp_path / "not-projector.safetensors"
    save_file({"mlp.0.weight": torch.zeros(16, 32)}, str(other), metadata={"format": "emma-module"})
    with pytest.raises(WeightsFileError, match="not a UMM projector"):
        load_projector(str(other))
    with pytest.raises(ValueError, match="width 32; got width 5"):
        loaded(torch.zeros(1, 5))
