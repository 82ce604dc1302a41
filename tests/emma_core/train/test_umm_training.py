"""UMM-Diffusion projector training on the shared trainer (CPU, toy sizes)."""
import time

import pytest
import torch

from devtools import toy_umm as umm_toy
from devtools.datasets import InMemoryDataset
from emma_core.train.loop import TrainConfig, train
from devtools.toy_train import ConvDenoiser
from emma_core.train.umm import UMMTask, unified_context
from emma_core.umm import UMMProjector, load_projector, replace_positions, save_projector


pytestmark = pytest.mark.usefixtures("one_thread")


def test_unified_context_shared_and_per_row_positions():
    h_y = torch.randn(2, 5, 3)
    pseudo = torch.randn(2, 3)
    shared = unified_context(h_y, [1, 2], pseudo)
    assert torch.equal(shared, replace_positions(h_y, [1, 2], pseudo))
    per_row = unified_context(h_y, [[1], [3, 4]], pseudo)
    assert torch.equal(per_row[0, 1], pseudo[0]) and torch.equal(per_row[1, 3], pseudo[1])
    assert torch.equal(per_row[1, 4], pseudo[1]) and torch.equal(per_row[0, 3], h_y[0, 3])
    assert torch.equal(per_row[1, 1], h_y[1, 1])


def test_only_the_projector_trains_and_the_denoiser_is_frozen(tmp_path):
    torch.manual_seed(0)
    den = ConvDenoiser(channels=32, context_dim=umm_toy.TEXT_DIM)
    before = {k: v.clone() for k, v in den.state_dict().items()}
    task = UMMTask(UMMProjector(umm_toy.TOY_PROJECTOR), den)
    assert set(dict(task.named_children())) == {"trainable"}
    data = InMemoryDataset(umm_toy.make_samples(8))
    train(task, data, TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup_iters=0, checkpoint_every=0),
          tmp_path / "run", resume=False)
    assert all(torch.equal(v, den.state_dict()[k]) for k, v in before.items())


def test_projector_learns_the_subject_slot(tmp_path):
    t0 = time.perf_counter()
    out = umm_toy.learn(tmp_path, verbose=False)
    elapsed = time.perf_counter() - t0
    print({k: v for k, v in out.items() if k != "task"}, f"{elapsed:.1f}s")
    untrained, trained, swapped = out["untrained_val_loss"], out["trained_val_loss"], out["swapped_embeds_val_loss"]
    assert trained < 0.9 * untrained, out
    assert swapped > 1.1 * trained, out
    assert elapsed < 90



def test_trained_projector_saves_and_loads(tmp_path):
    """A projector trained through UMMTask + train(), saved with save_projector, loads with load_projector
    with the same config and exactly the trained weights."""
    torch.manual_seed(0)
    task = UMMTask(UMMProjector(umm_toy.TOY_PROJECTOR), ConvDenoiser(channels=32, context_dim=umm_toy.TEXT_DIM))
    initial = {k: v.clone() for k, v in task.trainable.state_dict().items()}
    data = InMemoryDataset(umm_toy.make_samples(8))
    result = train(task, data, TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_iters=0, checkpoint_every=0),
                   tmp_path / "run", resume=False)
    projector = task.trainable
    trained_state = projector.state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in trained_state.items())
    path = tmp_path / "toy-umm-projector.safetensors"
    save_projector(projector, str(path), training_steps=result.step)
    loaded = load_projector(str(path))
    assert loaded.config == projector.config == umm_toy.TOY_PROJECTOR
    assert loaded.state_dict().keys() == trained_state.keys()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, trained_state[k]), k
    x = torch.randn(3, umm_toy.IMAGE_DIM)
    with torch.no_grad():
        assert torch.equal(loaded(x), projector.eval()(x))
