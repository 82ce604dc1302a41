"""UMM-Diffusion projector training on the shared trainer and its job builder (CPU, toy sizes)."""
import time

import pytest
import torch
from torch import nn

from devtools import toy_umm as umm_toy
from devtools.datasets import InMemoryDataset
from devtools.toy_train import ConvDenoiser
from devtools.toy_umm_comfy import ToyBase, ToyCLIP, ToyClipVision, ToyVAE, write_umm_dataset
from emma_core.adapters import Features
from emma_core.features_file import save_features
from emma_core.train.cache import CachedDataset
from emma_core.train.dataset import load_image
from emma_core.train.loop import TrainConfig, evaluate, train
from emma_core.train.objective import comfy_epsilon_denoiser
from emma_core.train.umm import UMMTask, unified_context
from emma_core.train.umm_job import SubjectWordError, UMMSamples, UMMTrainingJob, run_umm_job
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


class _TextOnly(nn.Module):
    """A "projector" that puts back the caption's own word: h_u == h_y, the prediction from the text alone."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, image_embeds):
        return umm_toy.word_vector("thing").expand(image_embeds.shape[0], -1)


def test_the_job_trains_a_projector_whose_pseudo_word_lowers_the_held_out_loss(tmp_path):
    """Folder -> cache (the ComfyUI interfaces on the toy world) -> loop -> projector file, through the job
    builder the node and the script use. On pictures of seeds it never saw, the written projector's loss is
    below the untrained projector's and the caption alone's, and rises when the subject picture is another
    concept's: the pseudo-word carries the subject."""
    t0 = time.perf_counter()
    base = ToyBase(umm_toy.pretrained_denoiser(tmp_path / "work"))
    write_umm_dataset(tmp_path / "subjects", 60)
    (tmp_path / "subjects" / "0000.txt").write_text("a photo")  # no subject word: reported, not trained on
    config = TrainConfig(steps=250, batch_size=16, lr=3e-3, warmup_iters=20, checkpoint_every=0, val_every=50,
                         log_every=10, seed=0)
    job = UMMTrainingJob(dataset=tmp_path / "subjects", subject_word="thing",
                         out_path=tmp_path / "umm" / "toy.safetensors", run_dir=tmp_path / "run", config=config,
                         vae=ToyVAE(), base_model=base, clip=ToyCLIP(), clip_vision=ToyClipVision(), resolution=64,
                         val_fraction=0.2, hidden_dim=umm_toy.HIDDEN_DIM, clip_name="toy-text",
                         clip_vision_name="toy-image")
    out = run_umm_job(job)
    assert ("0000.png", "the caption does not contain the subject word 'thing'") in out.cache.skipped
    assert (out.cache.items, out.train_count + out.val_count) == (59, 59) and out.result.best_step is not None
    projector = load_projector(str(out.projector_path))
    assert projector.config == umm_toy.TOY_PROJECTOR
    torch.manual_seed(config.seed)
    untrained = UMMProjector(projector.config)  # the job's starting weights

    held_out = InMemoryDataset(umm_toy.make_samples(30, seed=1))
    denoiser = comfy_epsilon_denoiser(base)
    loss = {name: evaluate(UMMTask(p, denoiser), data, 16) for name, p, data in (
        ("trained", projector, held_out), ("untrained", untrained, held_out), ("text alone", _TextOnly(), held_out),
        ("swapped subject", projector, umm_toy.SwappedEmbeds(held_out)))}
    elapsed = time.perf_counter() - t0
    print(loss, f"{elapsed:.1f}s")
    assert loss["trained"] < 0.9 * loss["untrained"], loss
    assert loss["trained"] < 0.9 * loss["text alone"], loss
    assert loss["swapped subject"] > 1.1 * loss["trained"], loss
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


def test_the_job_reads_subject_features_files_and_refuses_a_missing_subject_word(tmp_path):
    """Without CLIP Vision, `<name>_ref.safetensors` style features (Save EMMA Features) are the subject pictures'
    embeddings, read as they are; no caption with the subject word is a SubjectWordError before anything is
    encoded."""
    folder = tmp_path / "subjects"
    write_umm_dataset(folder, 4)
    saved = {}
    for ref in sorted(folder.glob("*_ref.png")):
        saved[ref.stem] = ToyClipVision().encode_image(load_image(ref, 64))["image_embeds"]
        save_features(Features("style", {"embeds": saved[ref.stem]}), str(folder / f"{ref.stem}.safetensors"))
        ref.unlink()
    job = dict(dataset=folder, out_path=tmp_path / "p.safetensors", run_dir=tmp_path / "run",
               config=TrainConfig(steps=1, batch_size=2, checkpoint_every=0), vae=ToyVAE(),
               base_model=ToyBase(ConvDenoiser(channels=32, context_dim=umm_toy.TEXT_DIM)), clip=ToyCLIP(),
               resolution=64, hidden_dim=8)
    out = run_umm_job(UMMTrainingJob(subject_word="thing", **job))
    samples = UMMSamples(CachedDataset(out.cache.folder), {f"{i:04d}.png": [3] for i in range(4)})
    for i in range(4):  # the files' embeddings as they are (nothing encoded) and the caption's h_y
        sample = samples.sample(i)
        assert torch.equal(sample["image_embeds"], saved[f"{i:04d}_ref"][0]) and sample["h_y"].shape == (4, 32)
    assert load_projector(str(out.projector_path)).config.image_dim == umm_toy.IMAGE_DIM
    for word, message in (("dog", "subject word 'dog' occurs in none of the 4 captions"), (" ", "is empty")):
        with pytest.raises(SubjectWordError, match=message):
            run_umm_job(UMMTrainingJob(subject_word=word, **dict(job, cache_root=tmp_path / "never")))
    assert not (tmp_path / "never").exists()
