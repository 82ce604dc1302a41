"""emma_core.emu.run: which review list a run honours, and the curation run's report."""
import pytest
from PIL import Image

from emma_core.emu.curate import CurationConfig, read_review_list
from emma_core.emu.run import curate, existing_review, review_path


def test_the_review_list_a_tuning_honours(tmp_path):
    assert review_path(tmp_path) == review_path(tmp_path, " ") == tmp_path / "emu_review.csv"
    assert existing_review(tmp_path) is None  # no list yet: every captioned image is used
    with pytest.raises(FileNotFoundError, match="mine.csv does not exist .run the curation first"):
        existing_review(tmp_path, tmp_path / "mine.csv")
    (tmp_path / "emu_review.csv").write_text("file,decision\n")
    assert existing_review(tmp_path) == tmp_path / "emu_review.csv"


def test_curation_run_writes_the_list_and_keeps_a_persons_decision(tmp_path):
    for name, size in (("big.png", (64, 64)), ("small.png", (16, 16))):
        Image.new("RGB", size, (200, 100, 50)).save(tmp_path / name)
    review = tmp_path / "lists" / "review.csv"
    config = CurationConfig(min_side=32, dedupe=False)
    _result, report = curate(tmp_path, config, review)
    assert "small.png: 16x16 (shorter side 16 < 32 px)" in report and report.endswith(f"review list: {review}")
    review.write_text(review.read_text().replace("small.png,reject,reject", "small.png,keep,reject"))
    _result, report = curate(tmp_path, config, review)
    assert report.endswith("(1 decisions you changed were kept)") and read_review_list(review)["small.png"].keep
