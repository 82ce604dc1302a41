"""emma_core.face.pack: every broken model folder is a FaceError that names the folder and the fix, before
insightface runs (it would download, or raise a bare AssertionError), and following the message fixes it."""
from __future__ import annotations

import shutil

import pytest

from devtools import face_packs
from emma_core.face import FaceAnalyzer, FaceError, check_pack


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if insightface tries to download anything."""
    import sys

    import insightface.utils.storage as storage

    calls = []
    dl = sys.modules["insightface.utils.download"]  # the package re-exports a function of the same name

    def fake_download(*args, **kwargs):
        calls.append((args, kwargs))
        raise RuntimeError("download attempted")

    monkeypatch.setattr(storage, "download_file", fake_download)
    monkeypatch.setattr(dl, "download_file", fake_download)
    return calls


def test_packs_have_the_real_layout_and_are_idempotent(packs_root):
    for name, files in face_packs.PACK_FILES.items():
        folder = packs_root / "models" / name
        assert sorted(p.name for p in folder.glob("*.onnx")) == sorted(files.values())
    before = {p: p.stat().st_mtime_ns for p in packs_root.rglob("*.onnx")}
    face_packs.ensure_face_packs(packs_root)
    assert {p: p.stat().st_mtime_ns for p in packs_root.rglob("*.onnx")} == before
    assert not list(packs_root.rglob("*.tmp"))


def _raises_face_error(root, name):
    """FaceAnalyzer must fail with a FaceError (never AssertionError / ConnectionError) and check_pack too."""
    with pytest.raises(FaceError) as from_check:
        check_pack(root, name)
    with pytest.raises(FaceError) as from_analyzer:
        FaceAnalyzer(root, name, providers="cpu")
    for info in (from_check, from_analyzer):
        assert not isinstance(info.value.__cause__, (AssertionError, ConnectionError))
    return str(from_analyzer.value)


def test_missing_root(tmp_path, no_download):
    root = tmp_path / "nowhere" / "insightface"
    msg = _raises_face_error(root, "antelopev2")
    assert str(root) in msg and "does not exist" in msg
    assert str(root / "models" / "antelopev2") in msg and "directly in" in msg
    assert not no_download and not root.exists()


def test_missing_pack_lists_the_packs_that_exist(tmp_path, no_download):
    face_packs.write_pack(tmp_path, "buffalo_l")
    msg = _raises_face_error(tmp_path, "antelopev2")
    assert "'antelopev2' not found" in msg and str(tmp_path / "models" / "antelopev2") in msg
    assert "Packs found in" in msg and "buffalo_l" in msg
    assert "scrfd_10g_bnkps.onnx" in msg and "glintr100.onnx" in msg
    assert not no_download and not (tmp_path / "models" / "antelopev2").exists()


def test_zipped_pack_says_unzip(tmp_path, no_download):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "antelopev2.zip").write_bytes(b"PK")
    msg = _raises_face_error(tmp_path, "antelopev2")
    assert "still zipped" in msg and "unzip" in msg


def test_nested_pack_says_which_folder_to_move(tmp_path, no_download):
    inner = face_packs.make_nested_pack(tmp_path, "antelopev2")
    outer = tmp_path / "models" / "antelopev2"
    assert inner == outer / "antelopev2"
    msg = _raises_face_error(tmp_path, "antelopev2")
    assert "nested one folder too deep" in msg
    assert "Move " in msg and f"from {inner}" in msg and f"to {outer}" in msg
    assert "scrfd_10g_bnkps.onnx" in msg
    # following the message fixes it
    for f in inner.glob("*.onnx"):
        shutil.move(str(f), str(outer / f.name))
    assert check_pack(tmp_path, "antelopev2") == outer
    assert FaceAnalyzer(tmp_path, "antelopev2", providers="cpu", det_size=320).pack_dir == outer


def test_empty_pack(tmp_path, no_download):
    folder = face_packs.make_empty_pack(tmp_path, "buffalo_l")
    msg = _raises_face_error(tmp_path, "buffalo_l")
    assert str(folder) in msg and "no .onnx files" in msg
    assert "det_10g.onnx" in msg and "w600k_r50.onnx" in msg


def test_pack_without_detector_or_recognizer(tmp_path, no_download):
    folder = face_packs.make_partial_pack(tmp_path, "antelopev2", keep="recognizer")
    with pytest.raises(FaceError, match="no face detector") as info:
        FaceAnalyzer(tmp_path, "antelopev2", providers="cpu")
    assert str(folder) in str(info.value) and "scrfd_10g_bnkps.onnx" in str(info.value)
    face_packs.make_partial_pack(tmp_path, "antelopev2", keep="detector")
    with pytest.raises(FaceError, match="no face recognition model") as info:
        FaceAnalyzer(tmp_path, "antelopev2", providers="cpu")
    assert "glintr100.onnx" in str(info.value)


def test_corrupt_onnx_file(tmp_path, no_download):
    folder = face_packs.write_pack(tmp_path, "antelopev2")
    (folder / "glintr100.onnx").write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    with pytest.raises(FaceError, match="could not load the face models") as info:
        FaceAnalyzer(tmp_path, "antelopev2", providers="cpu")
    assert str(folder) in str(info.value)
