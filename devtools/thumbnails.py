"""Thumbnails for ComfyUI's template browser: one `<name>.jpg` next to each `workflows/<name>.json`.

ComfyUI lists a pack's `workflows/` (or `example_workflows/`) folder under GET /workflow_templates and serves
the folder at /api/workflow_templates/<pack folder>/; the frontend (1.32) shows
`/api/workflow_templates/<pack>/<name>.jpg` as the card's picture. This draws a small, deterministic map of
the graph itself (nodes at their positions, coloured by role, links between them, the workflow's name), so
a thumbnail changes only when the workflow does and needs no model, GPU or browser.

    python -m devtools.thumbnails [workflows_dir]      # (re)writes every thumbnail
    from devtools.thumbnails import write_thumbnails   # build_workflows can call this after writing JSON
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (512, 384)
MAX_BYTES = 50_000
BACKGROUND = (24, 26, 32)
TITLE_BAR = (38, 41, 50)
LINK = (120, 130, 150)
# Node colours by role (matched on the node type).
ROLES = [
    (("EMMA", "ELLA", "UMM"), (64, 120, 200)),      # this pack
    (("ControlNet", "Canny"), (60, 150, 110)),
    (("LoadImage", "Mask", "Solid"), (150, 110, 60)),
    (("KSampler", "Latent", "VAE"), (140, 70, 140)),
    (("Save", "Preview"), (170, 60, 70)),
    (("Note",), (90, 90, 70)),
]
DEFAULT_NODE = (85, 90, 105)


def _font(size: int):
    for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _colour(node_type: str) -> tuple[int, int, int]:
    for keys, colour in ROLES:
        if any(k.lower() in node_type.lower() for k in keys):
            return colour
    return DEFAULT_NODE


def title_of(name: str) -> str:
    words = name.replace("_", " ").split()
    upper = {"ella": "ELLA", "emma": "EMMA", "umm": "UMM"}
    return " ".join(upper.get(w.lower(), w.capitalize() if w.islower() else w) for w in words)


def render(workflow: dict, title: str) -> Image.Image:
    """The graph, scaled into the card below a title bar."""
    img = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(img)
    bar = 54
    draw.rectangle([0, 0, SIZE[0], bar], fill=TITLE_BAR)
    draw.text((16, 10), title, font=_font(24), fill=(235, 238, 245))
    draw.text((16, 36), "ComfyUI-EMMA", font=_font(12), fill=(150, 160, 180))

    nodes = workflow.get("nodes", [])
    if not nodes:
        return img
    boxes = {}
    for n in nodes:
        x, y = (n.get("pos") or [0, 0])[:2]
        w, h = (n.get("size") or [200, 80])[:2]
        boxes[n["id"]] = (float(x), float(y), float(x) + float(w), float(y) + float(h))
    x0 = min(b[0] for b in boxes.values()); y0 = min(b[1] for b in boxes.values())
    x1 = max(b[2] for b in boxes.values()); y1 = max(b[3] for b in boxes.values())
    margin = 14
    area = (SIZE[0] - 2 * margin, SIZE[1] - bar - 2 * margin)
    scale = min(area[0] / max(x1 - x0, 1), area[1] / max(y1 - y0, 1))
    ox = margin + (area[0] - (x1 - x0) * scale) / 2
    oy = bar + margin + (area[1] - (y1 - y0) * scale) / 2

    def tr(b):
        return (ox + (b[0] - x0) * scale, oy + (b[1] - y0) * scale,
                ox + (b[2] - x0) * scale, oy + (b[3] - y0) * scale)

    for link in workflow.get("links", []):
        # UI format: [id, origin node, origin slot, target node, target slot, type]
        src, dst = boxes.get(link[1]), boxes.get(link[3])
        if src is None or dst is None:
            continue
        a, b = tr(src), tr(dst)
        start = (a[2], (a[1] + a[3]) / 2)
        end = (b[0], (b[1] + b[3]) / 2)
        mid = (start[0] + end[0]) / 2
        draw.line([start, (mid, start[1]), (mid, end[1]), end], fill=LINK, width=1)
    label_font = _font(max(8, min(12, int(14 * scale / 0.35))))
    for n in nodes:
        r = tr(boxes[n["id"]])
        colour = _colour(n.get("type", ""))
        draw.rounded_rectangle(r, radius=3, fill=tuple(int(c * 0.55) for c in colour), outline=colour)
        head = min(r[3], r[1] + max(5, 26 * scale))
        draw.rounded_rectangle((r[0], r[1], r[2], head), radius=3, fill=colour)
        label = n.get("title") or n.get("type", "")
        if r[2] - r[0] > 30 and head - r[1] >= 8:
            max_chars = max(3, int((r[2] - r[0] - 6) / (label_font.size * 0.6)))
            text = label if len(label) <= max_chars else label[: max_chars - 1] + "…"
            draw.text((r[0] + 3, r[1] + 1), text, font=label_font, fill=(245, 245, 250))
    return img


def encode(img: Image.Image) -> bytes:
    """JPEG under MAX_BYTES (lower quality until it fits)."""
    for quality in (85, 75, 65, 50, 35):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, optimize=True)
        if buf.tell() <= MAX_BYTES:
            return buf.getvalue()
    return buf.getvalue()


def thumbnail_path(workflow_path: Path) -> Path:
    return Path(workflow_path).with_suffix(".jpg")


def write_thumbnail(workflow_path: Path) -> Path:
    workflow_path = Path(workflow_path)
    workflow = json.loads(workflow_path.read_text())
    data = encode(render(workflow, title_of(workflow_path.stem)))
    out = thumbnail_path(workflow_path)
    if not out.exists() or out.read_bytes() != data:  # unchanged file: keep its mtime
        out.write_bytes(data)
    return out


def write_thumbnails(workflows_dir: Path) -> list[Path]:
    """One thumbnail per workflow; thumbnails whose workflow is gone are removed."""
    workflows_dir = Path(workflows_dir)
    written = [write_thumbnail(p) for p in sorted(workflows_dir.glob("*.json"))]
    for jpg in workflows_dir.glob("*.jpg"):
        if not jpg.with_suffix(".json").exists():
            jpg.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "workflows"
    for p in write_thumbnails(folder):
        print(f"{p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
