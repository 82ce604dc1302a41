"""Emu curation filters on a generated folder: each filter removes exactly what it should, and says why."""
import math

import pytest
from PIL import Image

from emma_core.emu.curate import CurationConfig, curate_folder, hamming, phash


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


@pytest.mark.parametrize("name", ["min_aspect", "max_aspect", "clip_min", "aesthetic_min"])
def test_a_nan_threshold_is_an_error_not_a_filter_that_keeps_everything(folder, name):
    with pytest.raises(ValueError, match=f"{name} is nan: give a finite number"):
        curate_folder(folder, CurationConfig(**{name: math.nan}), clip_score=lambda i, c: 1.0,
                      aesthetic_score=lambda i: 1.0)
