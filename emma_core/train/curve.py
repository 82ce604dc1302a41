"""The loss-curve picture, drawn with PIL (no matplotlib): training loss (raw, light; smoothed, dark) and
validation loss (points joined by a line), log-scaled y axis when the losses span more than a decade."""
from __future__ import annotations

import math
from typing import Sequence

TRAIN, SMOOTH, VAL, GRID, TEXT = (170, 190, 230), (30, 80, 200), (220, 80, 30), (225, 225, 225), (40, 40, 40)


def _ema(values: Sequence[float], alpha: float) -> list[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else alpha * m + (1 - alpha) * v
        out.append(m)
    return out


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-12 and len(ticks) < 20:
        ticks.append(t)
        t += step
    return ticks


def render_loss_curve(records: Sequence[dict], width: int = 768, height: int = 432, title: str = "EMMA training"):
    """PIL RGB image of the records (dicts with "step", "loss" and optionally "val_loss")."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
    left, right, top, bottom = 64, width - 16, 28, height - 40
    draw.text((left, 8), title, fill=TEXT, font=font)
    draw.rectangle([left, top, right, bottom], outline=(150, 150, 150))
    points = train + val
    if not points:
        draw.text((left + 10, top + 10), "no losses logged yet", fill=TEXT, font=font)
        return img
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    values = [p[1] for p in points]
    y_lo, y_hi = min(values), max(values)
    log_scale = y_lo > 0 and y_hi / y_lo > 10
    f = (lambda v: math.log10(v)) if log_scale else (lambda v: v)
    a, b = f(y_lo), f(y_hi)
    if b - a < 1e-12:
        a, b = a - 0.5 * (abs(a) or 1) * 0.1, b + 0.5 * (abs(b) or 1) * 0.1
    pad = (b - a) * 0.05
    a, b = a - pad, b + pad

    def xy(step, value):
        x = left + (step - x_lo) / (x_hi - x_lo) * (right - left)
        y = bottom - (f(value) - a) / (b - a) * (bottom - top)
        return x, y

    for t in _nice_ticks(x_lo, x_hi):
        x = xy(t, y_lo)[0]
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.text((x - 10, bottom + 4), f"{t:g}", fill=TEXT, font=font)
    y_ticks = [10 ** e for e in range(math.floor(a), math.ceil(b) + 1)] if log_scale else _nice_ticks(a, b)
    for t in y_ticks:
        if not (a <= f(t) <= b):
            continue
        y = xy(x_lo, t)[1]
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.text((4, y - 6), f"{t:.3g}", fill=TEXT, font=font)
    if len(train) > 1:
        draw.line([xy(s, v) for s, v in train], fill=TRAIN, width=1)
        smooth = _ema([v for _, v in train], alpha=min(0.98, 1 - 2 / max(len(train) / 10, 3)))
        draw.line([xy(s, v) for (s, _), v in zip(train, smooth)], fill=SMOOTH, width=2)
    elif train:
        x, y = xy(*train[0])
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=SMOOTH)
    if val:
        if len(val) > 1:
            draw.line([xy(s, v) for s, v in val], fill=VAL, width=2)
        for s, v in val:
            x, y = xy(s, v)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VAL)
    legend = [("train loss", TRAIN), ("smoothed", SMOOTH), ("validation loss", VAL)]
    lx = right - 130
    for i, (label, colour) in enumerate(legend):
        y = top + 8 + 14 * i
        draw.line([(lx, y + 6), (lx + 18, y + 6)], fill=colour, width=3)
        draw.text((lx + 24, y), label, fill=TEXT, font=font)
    draw.text(((left + right) // 2 - 12, height - 18), "step", fill=TEXT, font=font)
    if log_scale:
        draw.text((4, top - 20), "loss (log)", fill=TEXT, font=font)
    return img


def image_tensor(img):
    """PIL image -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
