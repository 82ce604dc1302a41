"""The contact sheet: numbered thumbnails of a curated folder, to review it by eye."""
from __future__ import annotations

import math

from .filters import CurationResult, open_image


def contact_sheet(result: CurationResult, columns: int = 8, thumb: int = 160, per_page: int = 64,
                  include_removed: bool = True) -> list:
    """PIL pages (all the same size) of numbered thumbnails with file names; removed files get a red frame
    and their filter's name, kept ones a green frame. The numbers follow the review list's order."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    removed = {r.name: r.filter for r in result.removed}
    entries = [(n, info) for n, info in enumerate(result.images, 1) if include_removed or info.name not in removed]
    label_h = 28
    cell_w, cell_h = thumb + 8, thumb + 8 + label_h
    per_page = max(1, per_page)
    rows = math.ceil(min(per_page, max(1, len(entries))) / columns)
    pages = []
    for start in range(0, max(1, len(entries)), per_page):
        page = Image.new("RGB", (columns * cell_w, rows * cell_h), (32, 32, 32))
        draw = ImageDraw.Draw(page)
        for k, (number, info) in enumerate(entries[start:start + per_page]):
            x, y = (k % columns) * cell_w, (k // columns) * cell_h
            colour = (220, 50, 50) if info.name in removed else (60, 190, 90)
            draw.rectangle([x + 1, y + 1, x + cell_w - 2, y + thumb + 6], outline=colour, width=3)
            if info.error is None:
                try:
                    im = open_image(info.path)
                    im.thumbnail((thumb, thumb))
                    page.paste(im, (x + 4 + (thumb - im.width) // 2, y + 4 + (thumb - im.height) // 2))
                except (OSError, ValueError):
                    pass
            name = info.name if len(info.name) <= 24 else info.name[:21] + "..."
            draw.text((x + 4, y + thumb + 8), f"{number}. {name}", fill=(235, 235, 235), font=font)
            status = f"removed: {removed[info.name]}" if info.name in removed else f"{info.width}x{info.height}"
            draw.text((x + 4, y + thumb + 20), status, fill=colour, font=font)
        pages.append(page)
    return pages
