"""The pack's workflows appear in ComfyUI's template browser, each with a thumbnail."""
import json
import urllib.request
from pathlib import Path

from PIL import Image

from devtools import thumbnails
from devtools.host import PACK_LINK_NAME

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_every_workflow_has_a_small_jpeg_thumbnail():
    assert WORKFLOWS
    for wf in WORKFLOWS:
        jpg = thumbnails.thumbnail_path(wf)
        assert jpg.is_file(), f"{jpg.name} missing: run python -m devtools.thumbnails"
        assert jpg.stat().st_size <= thumbnails.MAX_BYTES
        with Image.open(jpg) as im:
            assert im.format == "JPEG" and im.size == thumbnails.SIZE
    stray = {p.stem for p in (REPO / "workflows").glob("*.jpg")} - {p.stem for p in WORKFLOWS}
    assert not stray, f"thumbnails without a workflow: {stray}"


def test_thumbnail_rendering_is_deterministic(tmp_path):
    wf = WORKFLOWS[0]
    a = thumbnails.encode(thumbnails.render(json.loads(wf.read_text()), "x"))
    b = thumbnails.encode(thumbnails.render(json.loads(wf.read_text()), "x"))
    assert a == b and len(a) <= thumbnails.MAX_BYTES
    copy = tmp_path / wf.name
    copy.write_text(wf.read_text())
    (tmp_path / "gone.jpg").write_bytes(b"x")
    written = thumbnails.write_thumbnails(tmp_path)
    assert [p.name for p in written] == [wf.with_suffix(".jpg").name]
    assert not (tmp_path / "gone.jpg").exists()


def test_workflow_templates_lists_every_workflow_with_its_thumbnail(comfy_server):
    status, _, body = _get(f"{comfy_server.url}/workflow_templates")
    assert status == 200
    listed = json.loads(body)
    assert PACK_LINK_NAME in listed, f"pack not in /workflow_templates: {sorted(listed)}"
    assert sorted(listed[PACK_LINK_NAME]) == sorted(p.stem for p in WORKFLOWS)
    for wf in WORKFLOWS:
        base = f"{comfy_server.url}/api/workflow_templates/{PACK_LINK_NAME}/{wf.stem}"
        status, _, body = _get(base + ".json")
        assert status == 200 and json.loads(body)["nodes"]
        # What the frontend's template card shows for a custom-node template (mediaSubtype "jpg").
        status, ctype, body = _get(base + ".jpg")
        assert status == 200 and ctype == "image/jpeg" and body == thumbnails.thumbnail_path(wf).read_bytes()
