"""Against overfitting a small set: EMA of the trained weights, reference augmentation, min-SNR-gamma weighting,
warm-up proportional to the run (emma_core/train/loop.py, augment.py, objective.py)."""
import pytest
import torch

from devtools import toy_train as toy
from emma_core.adapters import Features
from emma_core.emma_module import load_module
from emma_core.train.augment import reference_views
from emma_core.train.cache import CacheEncoders, CachedDataset, build_cache
from emma_core.train.dataset import scan_dataset
from emma_core.train.emma import train_emma_module
from emma_core.train.loop import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _trajectory(tmp_path, name, steps, ema_decay, resume_at=None):
    task, data = toy.toy_task(0)
    params = []
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup_iters=0, checkpoint_every=1, seed=0,
                         ema_decay=ema_decay)
    record = lambda step, total, rec: params.append(  # noqa: E731
        [p.detach().clone() for p in task.trainable.parameters()])
    if resume_at:
        train(task, data, TrainConfig(**{**config.__dict__, "steps": resume_at}), tmp_path / name)
        task, data = toy.toy_task(0)
    train(task, data, config, tmp_path / name, on_step=record)
    return task, params


def test_ema_is_the_run_result_and_resumes_exactly(tmp_path):
    decay = 0.8
    plain, raw = _trajectory(tmp_path, "plain", 6, 0.0)
    averaged, _ = _trajectory(tmp_path, "ema", 6, decay)
    initial = [p.detach().clone() for p in toy.toy_task(0)[0].trainable.parameters()]
    expected = [p.clone() for p in initial]
    for t, step_params in enumerate(raw, start=1):  # the ramp: min(decay, (1 + t) / (10 + t))
        d = min(decay, (1 + t) / (10 + t))
        expected = [e * d + p * (1 - d) for e, p in zip(expected, step_params)]
    got = list(averaged.trainable.parameters())
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))
    assert not all(torch.allclose(g, r, atol=1e-4) for g, r in zip(got, raw[-1]))  # not the last weights
    resumed, _ = _trajectory(tmp_path, "resumed", 6, decay, resume_at=3)
    assert all(torch.equal(a, b) for a, b in zip(resumed.trainable.parameters(), averaged.trainable.parameters()))


def test_the_saved_module_holds_the_ema_weights(tmp_path):
    folder = tmp_path / "data"
    toy.write_toy_dataset(folder, 8)
    scan = scan_dataset(folder)
    report = build_cache(scan.items, tmp_path / "cache", toy.toy_encoders())
    ella, den = toy.ELLA(toy.TOY_ELLA), toy.ConvDenoiser()
    files = {}
    for decay in (0.0, 0.9):
        out = train_emma_module(report.folder, [i.name for i in scan.items], modality="face", ella=ella,
                                denoiser=den, out_path=tmp_path / f"m{decay}.safetensors", run_dir=tmp_path / f"r{decay}",
                                config=TrainConfig(steps=5, batch_size=4, lr=1e-2, checkpoint_every=0, ema_decay=decay),
                                val_fraction=0.0)
        files[decay] = load_module(str(out.module_path)).state_dict()
        last = torch.load(sorted((tmp_path / f"r{decay}").glob("checkpoint-*.pt"))[-1], weights_only=True)
        same_as_last = all(torch.allclose(files[decay][k].float(), v.float(), atol=2e-3)
                           for k, v in last["trainable"].items())
        assert same_as_last == (decay == 0.0), decay
        if decay:
            shadow = dict(zip(out.module.state_dict(), last["ema"]["shadow"]))
            assert all(torch.allclose(files[decay][k].float(), shadow[k].float(), atol=2e-3) for k in shadow)


def test_reference_views_are_fixed_per_name_and_transform_the_mask_alike():
    image = torch.zeros(1, 64, 96, 3)
    image[:, :, :48, 0] = 1.0  # left half red
    mask = torch.zeros(1, 64, 96)
    mask[:, :, :48] = 1.0
    views = reference_views(image, mask, 4, "0001.png")
    assert torch.equal(views[0][0], image) and torch.equal(views[0][1], mask)
    again = reference_views(image, mask, 4, "0001.png")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(views, again))
    assert not torch.equal(reference_views(image, mask, 4, "0002.png")[1][0], views[1][0])
    for view, view_mask in views[1:]:
        assert 0.7 * 64 <= view.shape[1] <= 1.1 * 64 and 0.7 * 96 <= view.shape[2] <= 1.1 * 96
        assert torch.allclose(view[0, ..., 0], view_mask[0], atol=1e-5)  # the mask moved with the picture
    assert len({v.shape for v, _ in views[1:]}) > 1
    flipped = [bool(v[0, :, -1, 0].mean() > 0.5) for v, _ in views[1:]]  # red on the right: a mirrored view
    assert any(flipped) or len(views) < 3


class ViewTagging:
    """Features that say which picture they came from (the mean), to see which view a step reads."""

    def __call__(self, image, mask=None):
        embedding = torch.zeros(1, toy.FACE_DIM)
        angle = image.mean() * 300  # a direction that turns with the picture (face embeddings are normalised)
        embedding[0, 0], embedding[0, 1] = torch.cos(angle), torch.sin(angle)
        return Features("face", {"embedding": embedding})


def test_each_step_reads_a_random_view_and_validation_the_reference(tmp_path):
    folder = tmp_path / "data"
    toy.write_toy_dataset(folder, 4)
    scan = scan_dataset(folder)
    encoders = CacheEncoders(toy.toy_encode_text, toy.toy_encode_image, ViewTagging(), {"toy": "views"},
                             resolution=64, feature_kind="face", reference_views=3)
    data = CachedDataset(build_cache(scan.items, tmp_path / "cache", encoders).folder)
    sample = data.sample(0)
    assert sample["views"]["embedding"].shape == (3, toy.FACE_DIM)
    task, _ = toy.toy_task(0)
    batch = task.collate([data.sample(i) for i in range(4)])
    assert batch["views"].tensors["embedding"].shape == (4, 4, toy.FACE_DIM)
    assert torch.equal(batch["views"].tensors["embedding"][:, 0], batch["features"].tensors["embedding"])
    g = torch.Generator().manual_seed(0)
    drawn = torch.stack([task.draw(batch, g).view for _ in range(50)])
    assert set(drawn.flatten().tolist()) == {0, 1, 2, 3}
    assert task.validation_draw(batch).view is None
    # the picked view is what the model reads: the loss of a draw changes with its views (gates opened: an
    # untrained module's zero gates hide its features)
    with torch.no_grad():
        for name, param in task.trainable.named_parameters():
            if "gate" in name:
                param.fill_(0.5)
    draw = task.draw(batch, torch.Generator().manual_seed(1))
    draw.view = torch.zeros(4, dtype=torch.long)
    at_reference = task.losses(batch, draw)
    draw.view = torch.full((4,), 3, dtype=torch.long)
    assert float((task.losses(batch, draw) - at_reference).detach().abs().max()) > 1e-4


def test_min_snr_weights_and_warmup_in_proportion():
    task, data = toy.toy_task(0)
    t = torch.tensor([0, 100, 500, 999])
    assert torch.equal(task.loss_weights(t), torch.ones(4))
    task.min_snr_gamma = 5.0
    a = task.schedule.alphas_cumprod[t]
    snr = a / (1 - a)
    assert torch.allclose(task.loss_weights(t), torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert float(task.loss_weights(t)[0]) < 0.01 and float(task.loss_weights(t)[-1]) == pytest.approx(1.0)
    batch = task.collate([data.sample(i) for i in range(4)])
    task.min_snr_gamma = 0.05  # below every drawn row's SNR but the noisiest: each row weighted down
    weighted = task(batch, torch.Generator().manual_seed(0)).detach()
    draw = task.draw(batch, torch.Generator().manual_seed(0))
    assert float(weighted) == pytest.approx(float((task.losses(batch, draw) * task.loss_weights(draw.timesteps)).mean().detach()))
    task.min_snr_gamma = 0.0
    assert float(weighted) < float(task(batch, torch.Generator().manual_seed(0)).detach())
    assert TrainConfig(steps=2000).warmup() == 100 and TrainConfig(steps=150).warmup() == 8
    assert TrainConfig(steps=2000, warmup_iters=0).warmup() == 0


def test_a_view_that_crops_the_painted_mask_away_reads_the_whole_picture(tmp_path):
    """An object mask painted only near the left edge: a view cropping that edge off has an empty mask, which
    (as for the Image Features node) means the whole picture, not a crash of the cache build."""
    from PIL import Image

    from emma_core.clip_features import clip_features

    folder = tmp_path / "data"
    toy.write_toy_dataset(folder, 2)
    mask = torch.zeros(64, 64)
    mask[:, :3] = 1.0
    for i in range(2):
        Image.fromarray((mask.numpy() * 255).astype("uint8")).save(folder / f"{i:04d}_mask.png")

    def condition(image, mask=None):  # CLIP-like tokens whose mask is dropped when empty, as clip_features does
        hidden = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0))
        return clip_features(hidden, hidden[:, 0], "clip_tokens", mask, image_size=image.shape[1])

    encoders = CacheEncoders(toy.toy_encode_text, toy.toy_encode_image, condition, {"toy": "masked views"},
                             resolution=64, use_masks=True, feature_kind="clip_tokens", reference_views=8)
    scan = scan_dataset(folder)
    data = CachedDataset(build_cache(scan.items, tmp_path / "cache", encoders).folder)
    views = data.sample(0)["views"]["mask"]
    assert views.shape == (8, 4) and bool((views == 1).all(dim=1).any())  # at least one view lost the mask
