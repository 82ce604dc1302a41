"""The automatic filters of the curation and their report: every removed file, which filter removed it and why
(the order and the rules are in the package docstring)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ...train.dataset import IMAGE_EXTENSIONS, MASK_SUFFIX

FILTERS = ("readable", "size", "aspect", "duplicate", "clip", "aesthetic")


@dataclass
class CurationConfig:
    min_side: int = 512              # shorter side in pixels (SD1.5 trains at 512)
    min_aspect: float = 0.5          # width / height
    max_aspect: float = 2.0
    dedupe: bool = True
    dedupe_distance: int = 6         # pHash Hamming distance (of 64 bits) that counts as a near-duplicate
    clip_min: Optional[float] = None       # e.g. 0.28 for cosine similarity of CLIP ViT-L/14 embeddings
    aesthetic_min: Optional[float] = None  # e.g. 5.5 on the LAION aesthetic predictor's 1-10 scale


@dataclass
class ImageInfo:
    name: str
    path: Path
    width: int = 0
    height: int = 0
    error: Optional[str] = None
    caption: Optional[str] = None

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class Removal:
    name: str
    filter: str
    reason: str


@dataclass
class CurationResult:
    folder: Path
    images: list[ImageInfo]
    kept: list[str]
    removed: list[Removal]
    scores: dict = field(default_factory=dict)    # {"clip": {name: score}, "aesthetic": {...}}
    notes: list[str] = field(default_factory=list)

    def removed_by(self, filter_name: str) -> dict[str, str]:
        return {r.name: r.reason for r in self.removed if r.filter == filter_name}

    def report(self) -> str:
        lines = [f"Emu curation of {self.folder}: {len(self.images)} images, {len(self.kept)} kept, "
                 f"{len(self.removed)} removed"]
        for name in FILTERS:
            removed = [r for r in self.removed if r.filter == name]
            if removed:
                lines.append(f"{name}: removed {len(removed)}")
                lines += [f"  {r.name}: {r.reason}" for r in removed]
        lines += self.notes
        return "\n".join(lines)


# ---- reading the folder --------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(os.path.expanduser(str(folder)))
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.endswith(MASK_SUFFIX))


def open_image(path: Path):
    """PIL RGB image with EXIF orientation applied."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def read_info(path: Path) -> ImageInfo:
    from PIL import Image, ImageOps, UnidentifiedImageError

    info = ImageInfo(path.name, path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            info.width, info.height = im.size
            im.load()  # catches truncated files too
    except (UnidentifiedImageError, OSError, ValueError) as error:
        info.error = f"unreadable image: {error}"
    caption = path.with_suffix(".txt")
    if caption.is_file():
        try:
            info.caption = caption.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            info.caption = None
    return info


# ---- perceptual hash ------------------------------------------------------------------------------------
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)


def phash(image) -> int:
    """64-bit DCT perceptual hash of a PIL image: grey 32x32, 2-D DCT, the 8x8 lowest frequencies compared
    with their median (the DC term left out of the median). Robust to resizing and re-encoding."""
    from PIL import Image

    grey = np.asarray(image.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float64)
    coeffs = (_DCT32 @ grey @ _DCT32.T)[:8, :8].flatten()
    median = np.median(coeffs[1:])
    bits = coeffs > median
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


# ---- the filters ----------------------------------------------------------------------------------------
def size_reason(info: ImageInfo, min_side: int) -> Optional[str]:
    side = min(info.width, info.height)
    if side < min_side:
        return f"{info.width}x{info.height} (shorter side {side} < {min_side} px)"
    return None


def aspect_reason(info: ImageInfo, lo: float, hi: float) -> Optional[str]:
    ratio = info.width / info.height
    if ratio < lo - 1e-9 or ratio > hi + 1e-9:
        return f"{info.width}x{info.height} (aspect {ratio:.3g} outside [{lo:g}, {hi:g}])"
    return None


def near_duplicates(infos: Sequence[ImageInfo], hashes: dict[str, int], distance: int) -> dict[str, str]:
    """{removed name: reason}. Images are visited largest first (then by name); one within `distance` bits
    of an image already kept is a duplicate of that image."""
    order = sorted(infos, key=lambda i: (-i.pixels, i.name))
    kept: list[tuple[str, int]] = []
    removed = {}
    for info in order:
        h = hashes[info.name]
        match = next(((name, d) for name, kh in kept if (d := hamming(h, kh)) <= distance), None)
        if match is None:
            kept.append((info.name, h))
        else:
            removed[info.name] = f"near-duplicate of {match[0]} (pHash distance {match[1]} <= {distance})"
    return removed


ClipScorer = Callable[[object, str], float]   # (PIL image, caption) -> score
AestheticScorer = Callable[[object], float]   # PIL image -> score


def curate_folder(folder: str | os.PathLike, config: CurationConfig = CurationConfig(),
                  clip_score: Optional[ClipScorer] = None, aesthetic_score: Optional[AestheticScorer] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> CurationResult:
    """Run the automatic filters on every image of `folder` (not sub-folders, not *_mask files)."""
    thresholds = {"min_aspect": config.min_aspect, "max_aspect": config.max_aspect, "clip_min": config.clip_min,
                  "aesthetic_min": config.aesthetic_min}
    for name, value in thresholds.items():  # NaN passes every comparison: the filter would silently keep all
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} is {value}: give a finite number")
    if config.min_aspect > config.max_aspect:
        raise ValueError(f"min_aspect {config.min_aspect} is larger than max_aspect {config.max_aspect}")
    if config.clip_min is not None and clip_score is None:
        raise ValueError("clip_min is set but no CLIP scorer was given (connect a CLIP vision model)")
    if config.aesthetic_min is not None and aesthetic_score is None:
        raise ValueError("aesthetic_min is set but no aesthetic scorer was given (choose a predictor file)")
    paths = list_images(folder)
    infos = [read_info(p) for p in paths]
    result = CurationResult(Path(folder), infos, [], [])
    alive: list[ImageInfo] = []
    for info in infos:
        if info.error:
            result.removed.append(Removal(info.name, "readable", info.error))
        elif (why := size_reason(info, config.min_side)) is not None:
            result.removed.append(Removal(info.name, "size", why))
        elif (why := aspect_reason(info, config.min_aspect, config.max_aspect)) is not None:
            result.removed.append(Removal(info.name, "aspect", why))
        else:
            alive.append(info)
    needs_pixels = config.dedupe or config.clip_min is not None or config.aesthetic_min is not None
    hashes, done, total = {}, 0, len(alive) * (1 + (config.clip_min is not None) + (config.aesthetic_min is not None))
    if needs_pixels and config.dedupe:
        for info in alive:
            hashes[info.name] = phash(open_image(info.path))
            done += 1
            if progress:
                progress(done, total)
        dupes = near_duplicates(alive, hashes, config.dedupe_distance)
        for info in alive:
            if info.name in dupes:
                result.removed.append(Removal(info.name, "duplicate", dupes[info.name]))
        alive = [i for i in alive if i.name not in dupes]
    if config.clip_min is not None:
        scores, survivors, uncaptioned = {}, [], []
        for info in alive:
            if not info.caption:
                uncaptioned.append(info.name)
                survivors.append(info)
                continue
            scores[info.name] = s = float(clip_score(open_image(info.path), info.caption))
            done += 1
            if progress:
                progress(done, total)
            if s < config.clip_min:
                result.removed.append(Removal(info.name, "clip", f"CLIP score {s:.4g} < {config.clip_min:g}"))
            else:
                survivors.append(info)
        result.scores["clip"] = scores
        if uncaptioned:
            result.notes.append(f"CLIP score not computed for {len(uncaptioned)} images without a caption "
                                f"(.txt): {', '.join(uncaptioned)}")
        alive = survivors
    if config.aesthetic_min is not None:
        scores, survivors = {}, []
        for info in alive:
            scores[info.name] = s = float(aesthetic_score(open_image(info.path)))
            done += 1
            if progress:
                progress(done, total)
            if s < config.aesthetic_min:
                result.removed.append(Removal(info.name, "aesthetic",
                                              f"aesthetic score {s:.4g} < {config.aesthetic_min:g}"))
            else:
                survivors.append(info)
        result.scores["aesthetic"] = scores
        alive = survivors
    order = {i.name: n for n, i in enumerate(infos)}
    result.removed.sort(key=lambda r: (FILTERS.index(r.filter), order[r.name]))
    result.kept = [i.name for i in infos if i.name in {a.name for a in alive}]
    no_caption = [n for n in result.kept if not next(i for i in infos if i.name == n).caption]
    if no_caption:
        result.notes.append(f"{len(no_caption)} kept images have no caption yet (the tuning needs <name>.txt): "
                            + ", ".join(no_caption))
    return result
