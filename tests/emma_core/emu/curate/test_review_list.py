"""The review list: honoured by the tuning, a person's decisions survive a re-run of the filters."""
import pytest
import torch

from emma_core.emu.curate import apply_review, curate_folder, read_review_list, write_review_list


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
    kept, skipped = apply_review([i.name for i in result.images] + ["unlisted.png"], review)
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
