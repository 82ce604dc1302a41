"""Thumbnails for ComfyUI's template browser: one `<name>.jpg` next to each `workflows/<name>.json`.

ComfyUI lists a pack's `workflows/` (or `example_workflows/`) folder under GET /workflow_templates and serves
the folder at /api/workflow_templates/<pack folder>/; the frontend (1.32) shows
`/api/workflow_templates/<pack>/<name>.jpg` as the card's picture. A workflow whose result the repository
keeps (the world's, made by its build) shows that picture. The others need files a test machine cannot have
(public downloads of GBs, or modules the user trains), so their card says honestly what they do and which
files they need, from the workflow's own note, above a small map of the graph. Deterministic: a thumbnail
changes only when the workflow (or its kept picture) does, and needs no model, GPU or browser.

    python -m devtools.thumbnails [workflows_dir]      # (re)writes every thumbnail
    from devtools.thumbnails import write_thumbnails   # build_workflows can call this after writing JSON
"""
from __future__ import annotations

import io
import json
import re
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
REPO = Path(__file__).resolve().parents[1]
# Workflows whose real result is kept in the repository: the world build's picture of the shipped graph.
# How a note says a file has no download (devtools/build_workflows.py writes these words).
MADE_NOT_DOWNLOADED = ("no public file", "never downloaded")
RESULTS = {"emma_world_assembled": REPO / "docs" / "world" / "workflow-picture.png"}


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


def _node_map(img: Image.Image, workflow: dict, area: tuple[int, int, int, int]) -> None:
    """The graph (nodes at their positions, coloured by role, links) scaled into `area` (x0, y0, x1, y1)."""
    draw = ImageDraw.Draw(img)
    nodes = workflow.get("nodes", [])
    if not nodes:
        return
    boxes = {}
    for n in nodes:
        x, y = (n.get("pos") or [0, 0])[:2]
        w, h = (n.get("size") or [200, 80])[:2]
        boxes[n["id"]] = (float(x), float(y), float(x) + float(w), float(y) + float(h))
    x0 = min(b[0] for b in boxes.values()); y0 = min(b[1] for b in boxes.values())
    x1 = max(b[2] for b in boxes.values()); y1 = max(b[3] for b in boxes.values())
    width, height = area[2] - area[0], area[3] - area[1]
    scale = min(width / max(x1 - x0, 1), height / max(y1 - y0, 1))
    ox = area[0] + (width - (x1 - x0) * scale) / 2
    oy = area[1] + (height - (y1 - y0) * scale) / 2

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
    for n in nodes:
        r = tr(boxes[n["id"]])
        colour = _colour(n.get("type", ""))
        draw.rounded_rectangle(r, radius=2, fill=tuple(int(c * 0.55) for c in colour), outline=colour)


def _note(workflow: dict) -> str:
    for n in workflow.get("nodes", []):
        if n.get("type") in ("MarkdownNote", "Note") and n.get("widgets_values"):
            return str(n["widgets_values"][0])
    return ""


def _summary(note: str) -> tuple[str, list[tuple[str, bool]]]:
    """(the note's first paragraph, [(model file, public download?)]) in plain text."""
    paragraphs = [p.strip() for p in note.split("\n\n") if p.strip() and not p.startswith("#")]
    first = re.sub(r"[`*]|\[([^]]*)\]\([^)]*\)", lambda m: m.group(1) or "", paragraphs[0]) if paragraphs else ""
    files = [(m.group(1).rstrip("/").rsplit("/", 1)[-1] + ("/" if m.group(1).endswith("/") else ""),
              not any(made in m.group(2) for made in MADE_NOT_DOWNLOADED))
             for m in re.finditer(r"^- `models/([^`]+)`: (.*)$", note, re.M)]
    return first, files


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + [line] if line else lines


def render(workflow: dict, title: str, result: Path | None = None) -> Image.Image:
    """The template card: a title bar; then the picture this workflow made (`result`), or, for a workflow
    whose files a user must first get or train, an honest card: what it does, each model file with whether
    it has a public download, and a small map of the graph."""
    img = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(img)
    bar = 54
    draw.rectangle([0, 0, SIZE[0], bar], fill=TITLE_BAR)
    draw.text((16, 10), title, font=_font(22), fill=(235, 238, 245))
    draw.text((16, 36), "ComfyUI-EMMA", font=_font(12), fill=(150, 160, 180))
    what, files = _summary(_note(workflow))
    if result is not None:
        with Image.open(result) as picture:
            side = SIZE[1] - bar - 64
            shown = picture.convert("RGB").resize((side, side), Image.NEAREST)
        img.paste(shown, ((SIZE[0] - side) // 2, bar + 12))
        caption = "the picture this workflow makes from the world's models"
        font = _font(13)
        draw.text(((SIZE[0] - draw.textlength(caption, font=font)) / 2, SIZE[1] - 40), caption, font=font,
                  fill=(200, 205, 215))
        return img
    font, small = _font(13), _font(12)
    y = bar + 10
    for line in _wrap(draw, what, font, SIZE[0] - 32)[:5]:
        draw.text((16, y), line, font=font, fill=(220, 224, 232))
        y += 18
    y += 6
    for name, public in files[:8]:
        mark, colour = ("public download", (120, 200, 140)) if public else ("you train or build it", (230, 170, 80))
        draw.text((16, y), "\u25cf", font=small, fill=colour)
        draw.text((32, y), name, font=small, fill=(220, 224, 232))
        draw.text((SIZE[0] - 16 - draw.textlength(mark, font=small), y), mark, font=small, fill=colour)
        y += 16
    _node_map(img, workflow, (16, y + 8, SIZE[0] - 16, SIZE[1] - 10))
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


def result_picture(workflow_path: Path) -> Path | None:
    """A picture the workflow really made, where one is kept in the repository."""
    picture = RESULTS.get(Path(workflow_path).stem)
    return picture if picture is not None and picture.is_file() else None


def write_thumbnail(workflow_path: Path) -> Path:
    workflow_path = Path(workflow_path)
    workflow = json.loads(workflow_path.read_text())
    data = encode(render(workflow, title_of(workflow_path.stem), result_picture(workflow_path)))
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
