"""The attribute reader: shape, colour and background read back from a picture by fixed rules.

Nothing here is learned or fitted to generated pictures. The rules follow from how the world is drawn
(scene.py): the ground is grey and the object saturated, so chroma finds the object; its hue names the colour;
its outline's geometry names the shape; the ground's Fourier energy around the pattern period names the
background. The thresholds were set on world pictures with blur and noise added (tests/devtools/world).

    reading = read(picture)          # picture: [H, W, 3] floats in [0, 1] or uint8
    reading.shape, reading.colour, reading.background    # None where nothing can be read
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .scene import BACKGROUNDS, COLOURS, HUES, PERIOD_FRACTION, SHAPES

CHROMA_MIN = 0.25          # max(rgb) - min(rgb) above this is object, below is ground
MIN_AREA = 0.02            # an object covers at least 2 % of the picture (the world's smallest is ~14 %)
TRIANGLE_OFFSET = 0.07     # centroid below the box centre by this fraction of the height (a triangle: 1/6)
SQUARE_CORNERS = 0.6       # mean fill of the box's four corner quarters: square ~1, circle ~0.3, cross ~0
CIRCLE_CORNERS = 0.12
PLAIN_STD = 0.06           # grey-level spread of a plain ground is ~0; patterns ~0.2
STRIPE_AXIS, STRIPE_CROSS = 0.6, 0.15
CHECK_DIAGONAL, CHECK_AXES = 0.6, 0.2


@dataclass
class Reading:
    shape: Optional[str]
    colour: Optional[str]
    background: Optional[str]
    details: dict = field(default_factory=dict)

    def get(self, attribute: str) -> Optional[str]:
        return getattr(self, attribute)


def _float(picture) -> np.ndarray:
    picture = np.asarray(picture)
    if picture.dtype == np.uint8:
        picture = picture.astype(np.float32) / 255.0
    if picture.ndim != 3 or picture.shape[-1] != 3:
        raise ValueError(f"expected a picture [H, W, 3], got {picture.shape}")
    return picture.astype(np.float32)


def hue(rgb: np.ndarray) -> float:
    r, g, b = (float(v) for v in rgb)
    high, low = max(r, g, b), min(r, g, b)
    if high - low < 1e-6:
        return 0.0
    if high == r:
        h = ((g - b) / (high - low)) % 6
    elif high == g:
        h = (b - r) / (high - low) + 2
    else:
        h = (r - g) / (high - low) + 4
    return h * 60.0


def nearest_colour(h: float) -> str:
    distance = [min(abs(h - c), 360 - abs(h - c)) for c in HUES]
    return COLOURS[int(np.argmin(distance))]


def _object(picture: np.ndarray) -> Optional[np.ndarray]:
    from scipy import ndimage

    chromatic = picture.max(-1) - picture.min(-1) > CHROMA_MIN
    labels, count = ndimage.label(chromatic)
    if count == 0:
        return None
    sizes = ndimage.sum(chromatic, labels, range(1, count + 1))
    largest = labels == 1 + int(np.argmax(sizes))
    if largest.sum() < MIN_AREA * picture.shape[0] * picture.shape[1]:
        return None
    return ndimage.binary_fill_holes(largest)


def read_shape(mask: np.ndarray, details: dict) -> str:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    height, width = y1 - y0, x1 - x0
    offset = ((ys + 0.5).mean() - (y0 + y1) / 2) / height
    box = mask[y0:y1, x0:x1]
    qh, qw = max(1, height // 4), max(1, width // 4)
    corners = float(np.mean([box[:qh, :qw].mean(), box[:qh, -qw:].mean(), box[-qh:, :qw].mean(),
                             box[-qh:, -qw:].mean()]))
    details.update(centroid_offset=round(float(offset), 3), corner_fill=round(corners, 3))
    if offset > TRIANGLE_OFFSET:
        return "triangle"
    if corners > SQUARE_CORNERS:
        return "square"
    if corners > CIRCLE_CORNERS:
        return "circle"
    return "cross"


def read_background(picture: np.ndarray, obj: Optional[np.ndarray], details: dict) -> str:
    from scipy import ndimage

    size = picture.shape[0]
    grey = picture.mean(-1)
    ground = np.ones_like(grey, bool) if obj is None else ~ndimage.binary_dilation(obj, iterations=max(1, size // 32))
    values = grey[ground]
    spread = float(values.std()) if values.size else 0.0
    details["ground_std"] = round(spread, 3)
    if spread < PLAIN_STD:
        return "plain"
    filled = np.where(ground, grey, np.median(values)) - values.mean()
    power = np.abs(np.fft.fft2(filled)) ** 2
    fx = np.abs(np.fft.fftfreq(size))[None, :].repeat(size, 0)
    fy = fx.T
    fundamental = 1.0 / (size * PERIOD_FRACTION)
    band = (np.maximum(fx, fy) > 0.5 * fundamental) & (np.maximum(fx, fy) < 2.5 * fundamental)
    axis = 0.5 / size
    along_x = power[(fy < axis) & band].sum()
    along_y = power[(fx < axis) & band].sum()
    diagonal = power[(fx >= axis) & (fy >= axis) & band].sum()
    total = along_x + along_y + diagonal + 1e-12
    rx, ry, rd = along_x / total, along_y / total, diagonal / total
    details.update(energy_x=round(float(rx), 3), energy_y=round(float(ry), 3), energy_diagonal=round(float(rd), 3))
    if rx > STRIPE_AXIS and ry < STRIPE_CROSS:
        return "stripes"
    if rd > CHECK_DIAGONAL and rx < CHECK_AXES and ry < CHECK_AXES:
        return "checks"
    return "dots"


def read(picture) -> Reading:
    picture = _float(picture)
    details: dict = {}
    obj = _object(picture)
    shape = colour = None
    if obj is not None:
        chromatic = obj & (picture.max(-1) - picture.min(-1) > CHROMA_MIN)
        colour = nearest_colour(hue(np.median(picture[chromatic], axis=0)))
        shape = read_shape(obj, details)
        details["object_area"] = round(float(obj.mean()), 3)
    background = read_background(picture, obj, details)
    assert shape in SHAPES + (None,) and background in BACKGROUNDS
    return Reading(shape, colour, background, details)
