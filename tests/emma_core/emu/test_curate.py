"""Emu curation on a generated folder: each filter removes exactly what it should, and says why."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from emma_core.emu.curate import (CurationConfig, apply_review, contact_sheet, curate_folder, hamming, phash,
                                  read_review_list, write_review_list)


def picture(seed: int, size) -> Image.Image:
    """A smooth random picture (low frequencies, so its perceptual hash is stable under resizing)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    return small.resize(size, Image.BICUBIC)


SIZES = {  # name: (width, height)
    "ok1.png": (640, 640), "ok2.png": (800, 600), "ok3.jpg": (512, 1024),   # aspect 0.5: on the boundary, kept
    "small1.png": (500, 700), "small2.png": (300, 300), "ok1_thumb.png": (256, 256),
    "wide.png": (1200, 520), "tall.png": (520, 1100),
    "orig.png": (1024, 768),
}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for n, (name, size) in enumerate(SIZES.items()):
        seed = 1 if name == "ok1_thumb.png" else 100 + n
        picture(seed, size).save(tmp_path / name, quality=90)
        (tmp_path / name).with_suffix(".txt").write_text(f"caption of {name}")
    orig = Image.open(tmp_path / "orig.png")
    orig.resize((800, 600), Image.LANCZOS).save(tmp_path / "copy.jpg", quality=80)           # resized + JPEG
    ImageEnhance.Brightness(orig.resize((1000, 750))).enhance(1.08).save(tmp_path / "copy2.png")  # brighter
    picture(1, (640, 640)).save(tmp_path / "ok1.png")                                         # ok1_thumb's source
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    picture(7, (640, 640)).convert("L").save(tmp_path / "ok1_mask.png")                      # a mask: not an image
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_each_filter_removes_exactly_its_images_and_says_why(folder):
    result = curate_folder(folder, CurationConfig(min_side=512, min_aspect=0.5, max_aspect=2.0, dedupe_distance=6))
    assert set(result.removed_by("readable")) == {"broken.png"}
    assert set(result.removed_by("size")) == {"small1.png", "small2.png", "ok1_thumb.png"}
    assert set(result.removed_by("aspect")) == {"wide.png", "tall.png"}
    assert set(result.removed_by("duplicate")) == {"copy.jpg", "copy2.png"}
    assert sorted(result.kept) == ["ok1.png", "ok2.png", "ok3.jpg", "orig.png"]
    assert len(result.images) == 12  # the mask and the .txt files are not images
    assert result.removed_by("size")["small1.png"] == "500x700 (shorter side 500 < 512 px)"
    assert result.removed_by("aspect")["wide.png"].startswith("1200x520 (aspect 2.31 outside [0.5, 2])")
    assert result.removed_by("duplicate")["copy.jpg"].startswith("near-duplicate of orig.png (pHash distance")
    report = result.report()
    for r in result.removed:
        assert f"  {r.name}: {r.reason}" in report
    assert "12 images, 4 kept, 8 removed" in report


def test_thresholds_move_the_sets(folder):
    result = curate_folder(folder, CurationConfig(min_side=300, min_aspect=0.4, max_aspect=2.5, dedupe=False))
    assert set(result.removed_by("size")) == {"ok1_thumb.png"}
    assert result.removed_by("aspect") == {} and result.removed_by("duplicate") == {}


def test_phash_separates_distinct_pictures_and_matches_copies(folder):
    h = {n: phash(Image.open(folder / n)) for n in ("orig.png", "copy.jpg", "copy2.png", "ok1.png", "ok2.png")}
    assert hamming(h["orig.png"], h["copy.jpg"]) <= 6 and hamming(h["orig.png"], h["copy2.png"]) <= 6
    assert hamming(h["ok1.png"], h["ok2.png"]) > 12 and hamming(h["orig.png"], h["ok1.png"]) > 12


def test_score_filters_use_the_given_scorers(folder):
    captions = {"ok2.png": "a blurry snapshot"}
    (folder / "ok2.txt").write_text(captions["ok2.png"])
    (folder / "ok3.txt").unlink()
    clip = lambda image, caption: 0.1 if "blurry" in caption else 0.3  # noqa: E731
    aesthetic = lambda image: 4.0 if image.size == (1024, 768) else 6.0  # noqa: E731
    result = curate_folder(folder, CurationConfig(clip_min=0.2, aesthetic_min=5.0), clip_score=clip,
                           aesthetic_score=aesthetic)
    assert result.removed_by("clip") == {"ok2.png": "CLIP score 0.1 < 0.2"}
    assert result.removed_by("aesthetic") == {"orig.png": "aesthetic score 4 < 5"}
    assert sorted(result.kept) == ["ok1.png", "ok3.jpg"]
    assert "ok3.jpg" not in result.scores["clip"]
    assert any("without a caption" in n and "ok3.jpg" in n for n in result.notes)
    with pytest.raises(ValueError, match="no CLIP scorer"):
        curate_folder(folder, CurationConfig(clip_min=0.2))


def test_review_list_is_honoured_and_survives_a_rerun(folder):
    result = curate_folder(folder)
    path = folder / "emu_review.csv"
    assert write_review_list(path, result) == 0
    review = read_review_list(path)
    assert {n for n, d in review.items() if d.keep} == set(result.kept)
    assert review["wide.png"].reason.startswith("aspect: 1200x520")
    # the human pass: reject one kept image, rescue one the filters removed
    text = path.read_text().replace("ok2.png,keep,keep,", "ok2.png,reject,keep,").replace(
        "tall.png,reject,reject", "tall.png,keep,reject")
    path.write_text(text)
    review = read_review_list(path)
    kept, skipped = apply_review(sorted(SIZES) + ["unlisted.png"], review)
    assert kept == ["ok1.png", "ok3.jpg", "orig.png", "tall.png"]
    assert dict(skipped)["ok2.png"] == "rejected in the review list"
    assert dict(skipped)["unlisted.png"].startswith("not in the review list")
    # re-running the curation keeps both human decisions
    assert write_review_list(path, curate_folder(folder)) == 2
    assert {n for n, d in read_review_list(path).items() if d.keep} == {"ok1.png", "ok3.jpg", "orig.png", "tall.png"}
    path.write_text("file,decision\nok1.png,maybe\n")
    with pytest.raises(ValueError, match="row 2: decision 'maybe' is neither keep nor reject"):
        read_review_list(path)


def test_tuning_dataset_uses_exactly_the_files_marked_keep(folder, tmp_path_factory):
    from emma_core.emu.quality_tune import prepare_dataset

    result = curate_folder(folder)
    path = folder / "emu_review.csv"
    write_review_list(path, result)
    path.write_text(path.read_text().replace("ok2.png,keep", "ok2.png,reject"))
    data = prepare_dataset(folder, path, encode_text=lambda c: torch.full((77, 768), float(len(c))),
                           encode_image=lambda im: torch.nn.functional.avg_pool2d(im.permute(0, 3, 1, 2), 8)[:, :3],
                           fingerprint={"test": 1}, cache_root=tmp_path_factory.mktemp("cache"), resolution=32,
                           val_fraction=0.0)
    assert data.names == ["ok1.png", "ok3.jpg", "orig.png"]
    assert "ok2.png: rejected in the review list" in data.report


def test_contact_sheet_pages(folder):
    result = curate_folder(folder)
    pages = contact_sheet(result, columns=4, thumb=64, per_page=8)
    assert len(pages) == 2 and pages[0].size == pages[1].size == (4 * 72, 2 * (72 + 28))
    # a removed image is framed red, a kept one green (first cell: broken.png, removed)
    assert pages[0].getpixel((2, 2))[0] > 200 and pages[0].getpixel((2, 2))[1] < 80
