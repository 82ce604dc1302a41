"""A kohya/OneTrainer-style folder trains as it is: aspect buckets (each batch from one), features from the whole
picture, a dataset report of buckets and skips (emma_core/train/buckets.py, dataset.py, cache.py, loop.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from devtools import toy_train as toy
from emma_core.ella import ELLA
from emma_core.train.buckets import bucket_sizes, nearest_bucket
from emma_core.train.cache import CacheEncoders, CachedDataset, Subset, build_cache
from emma_core.train.dataset import scan_dataset
from emma_core.train.loop import BucketOrder, TrainConfig, train
from emma_core.train.objective import EMMATask

pytestmark = pytest.mark.usefixtures("one_thread")

# name: (width, height); "wide" has its only bright mark at the far left, outside any square centre crop
PICTURES = {"wide": (400, 240), "wide2": (330, 200), "tall": (240, 400), "square": (300, 300),
            "square2": (280, 280), "tall2": (210, 350)}


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in PICTURES.items():
        arr = (rng.random((h, w, 3)) * 60).astype("uint8")
        if name == "wide":
            arr[:, :40] = 255  # the mark: inside the whole picture, outside its 240 x 240 centre
        Image.fromarray(arr).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a photo called {name}")
    Image.fromarray(np.zeros((64, 64, 3), "uint8")).save(folder / "uncaptioned.png")
    return folder


class SeenShapes:
    """A condition encoder that records the picture it is given and tells whether the mark is in it."""

    def __init__(self):
        self.seen = {}

    def __call__(self, image, mask=None):
        self.seen[tuple(image.shape[1:3])] = float(image.amax())
        square = F.interpolate(image.movedim(-1, 1), size=(64, 64), mode="bilinear").movedim(1, -1)
        return toy.toy_encode_condition(square)


def _encoders(condition, buckets: bool) -> CacheEncoders:
    return CacheEncoders(toy.toy_encode_text, toy.toy_encode_image, condition,
                         fingerprint={"toy": 1, "feature_kind": "face", "buckets": buckets}, resolution=256,
                         feature_kind="face", buckets=buckets)


def test_buckets_keep_the_aspect_in_steps_of_64_at_about_the_area():
    for resolution in (512, 768):
        for w, h in bucket_sizes(resolution):
            assert w % 64 == 0 and h % 64 == 0 and w * h <= resolution ** 2
            assert w * h >= 0.8 * resolution ** 2 and max(w, h) / min(w, h) <= 2.0
    assert nearest_bucket(4032, 3024, 512) == (576, 448) and nearest_bucket(3024, 4032, 512) == (448, 576)
    assert nearest_bucket(1000, 1000, 512) == (512, 512) and nearest_bucket(5000, 1000, 512) == (640, 384)
    assert bucket_sizes(32) == [(32, 32)]  # below 64 px: one square bucket (the tiny worlds)


def test_a_folder_of_any_aspect_goes_to_buckets_with_features_from_the_whole_picture(tmp_path):
    folder = _folder(tmp_path)
    scan = scan_dataset(folder)
    condition = SeenShapes()
    report = build_cache(scan.items, tmp_path / "cache", _encoders(condition, True), scan_skipped=scan.skipped)
    assert report.buckets == {"320x192": 2, "192x320": 2, "256x256": 2}
    text = report.text()
    assert "320x192: 2" in text and "uncaptioned.png: no caption file" in text
    data = CachedDataset(report.folder)
    shapes = {data.names[i]: tuple(data.sample(i)["latents"].shape[1:]) for i in range(len(data))}
    assert shapes["wide.png"] == (192 // 8, 320 // 8) and shapes["tall.png"] == (320 // 8, 192 // 8)
    groups = data.shape_groups()
    assert sorted(len(g) for g in groups) == [2, 2, 2]
    # the condition encoder saw each whole picture at its own aspect, the mark of "wide" included
    wide = [(h, w) for (h, w) in condition.seen if w / h == pytest.approx(400 / 240, rel=0.02)]
    assert wide and condition.seen[wide[0]] == 1.0

    square = SeenShapes()
    old = build_cache(scan.items, tmp_path / "cache-square", _encoders(square, False))
    assert old.buckets is None and set(square.seen) == {(256, 256)}
    assert max(square.seen.values()) < 1.0  # a square centre crop loses the mark: what buckets fix


def test_bucket_order_batches_one_bucket_each_and_resumes_where_it_was():
    groups = [[0, 3, 5, 7, 9], [1, 2, 8], [4], [6, 10]]
    order = BucketOrder(groups, batch=2, seed=3)
    where = {i: g for g, group in enumerate(groups) for i in group}
    first_epoch = [order.take(2) for _ in range(3 + 2 + 1 + 1)]
    assert order.epoch == 1 and order.offset == 0
    assert all(len({where[i] for i in batch}) == 1 for batch in first_epoch)
    assert set().union(*map(set, first_epoch)) == set(range(11))
    order.take(2)
    state = order.state()
    later = [order.take(2) for _ in range(9)]  # into the third epoch
    resumed = BucketOrder(groups, batch=2, seed=3, epoch=state["epoch"], offset=state["offset"])
    assert [resumed.take(2) for _ in range(9)] == later
    assert later[:6] != first_epoch[1:7]  # each epoch shuffles anew
    with pytest.raises(ValueError, match="bucketed batches"):
        order.take(3)


def test_training_and_validation_run_over_several_buckets(tmp_path):
    folder = _folder(tmp_path)
    scan = scan_dataset(folder)
    report = build_cache(scan.items, tmp_path / "cache", _encoders(SeenShapes(), True))
    data = CachedDataset(report.folder)
    torch.manual_seed(0)
    task = EMMATask(toy.small_emma(), ELLA(toy.TOY_ELLA), toy.ConvDenoiser(), empty_text=data.empty_text)
    train_set, val_set = Subset(data, [0, 1, 2, 3]), Subset(data, [4, 5])
    seen = []
    collate = task.collate
    task.collate = lambda samples: seen.append({tuple(s["latents"].shape) for s in samples}) or collate(samples)
    result = train(task, train_set, TrainConfig(steps=4, batch_size=2, checkpoint_every=0, val_every=2),
                   tmp_path / "run", val_set=val_set)
    assert result.step == 4 and result.best_val_loss is not None
    assert all(len(shapes) == 1 for shapes in seen)  # every batch (training and validation) from one bucket
    assert len(set().union(*seen)) >= 2


def test_a_resolution_off_the_64_grid_trains_square_and_caches_without_buckets_stay_one_group(tmp_path):
    assert bucket_sizes(96) == [(96, 96)] and nearest_bucket(300, 300, 544) == (544, 544)
    folder = _folder(tmp_path)
    scan = scan_dataset(folder)
    plain = CachedDataset(build_cache(scan.items, tmp_path / "cache", _encoders(SeenShapes(), False)).folder)
    assert plain.shape_groups() == [list(range(len(plain)))]  # as an Emu cache: never split


def test_a_run_resumes_only_with_the_same_buckets_and_batch(tmp_path):
    folder = _folder(tmp_path)
    scan = scan_dataset(folder)
    data = CachedDataset(build_cache(scan.items, tmp_path / "cache", _encoders(SeenShapes(), True)).folder)

    def run(batch_size, steps, subset):
        torch.manual_seed(0)
        task = EMMATask(toy.small_emma(), ELLA(toy.TOY_ELLA), toy.ConvDenoiser(), empty_text=data.empty_text)
        return train(task, subset, TrainConfig(steps=steps, batch_size=batch_size, checkpoint_every=1),
                     tmp_path / "run")

    run(2, 1, Subset(data, list(range(len(data)))))
    with pytest.raises(ValueError, match="batches of 2.*batch size and gradient accumulation"):
        run(1, 2, Subset(data, list(range(len(data)))))
    with pytest.raises(ValueError, match="with aspect buckets .*now the data comes without buckets"):
        run(2, 2, _OneGroup(data))
    assert run(2, 2, Subset(data, list(range(len(data))))).resumed_from == 1


class _OneGroup(Subset):
    """The same samples without their bucket groups (as a run folder trained before buckets resumes)."""

    def __init__(self, data):
        super().__init__(data, list(range(len(data))))

    def shape_groups(self):
        return [list(range(len(self)))]
