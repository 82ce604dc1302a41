"""Curation for quality-tuning: automatic filters, then a human pass.

Emu (Dai et al. 2023) curates in stages: automatic filters (aesthetic score, CLIP score, size, aspect ratio,
...) cut the pool, then people pick the few hundred to few thousand "photogenic" images. Here:

    result = curate_folder(folder, CurationConfig(min_side=512), clip_score=..., aesthetic_score=...)
    print(result.report())                     every removed file, which filter removed it and why
    write_review_list(folder / REVIEW_NAME, result)
    pages = contact_sheet(result)              PIL images to review (removed files framed red, with the reason)
    ... the user edits the review list (keep / reject per file) ...
    review = read_review_list(folder / REVIEW_NAME)
    kept, skipped = apply_review(names, review)   what the tuning uses (only files marked keep)

Filters run in this order and each file is removed by the first one it fails (its reason names that filter):
1. readable   the file opens as an image
2. size       the shorter side is at least `min_side` px
3. aspect     width / height lies in [min_aspect, max_aspect]
4. duplicate  near-duplicates by perceptual hash (DCT pHash, 64 bits): of a group within `dedupe_distance`
              bits, the largest image (then the first by name) is kept, the others name it in their reason
5. clip       optional: CLIP score of (image, its .txt caption) >= clip_min, from a scorer the user provides
6. aesthetic  optional: aesthetic score >= aesthetic_min, from a predictor the user provides
No thresholds were published by Emu; the defaults are conventional for SD1.5 fine-tuning.

The review list is a small CSV users edit in any text editor or spreadsheet:

    # comment lines start with '#'
    file,decision,auto,reason
    0001.jpg,keep,keep,
    0002.jpg,reject,reject,size: 300x200 (shorter side 200 < 512 px)

`decision` is what the tuning honours (keep / reject; y/n, yes/no, 1/0, k/r and x are accepted too);
`auto` is what the filters said. Re-running the curation keeps every decision a person changed (decision !=
auto) and updates the rest. Files not in the list are not used by the tuning (they were never reviewed).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MASK_SUFFIX = "_mask"
REVIEW_NAME = "emu_review.csv"
REVIEW_FIELDS = ["file", "decision", "auto", "reason"]
KEEP_WORDS = {"keep", "k", "yes", "y", "1", "true", "ok"}
REJECT_WORDS = {"reject", "r", "no", "n", "0", "false", "x", "drop"}
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


# ---- the review list ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    keep: bool
    auto: Optional[bool]
    reason: str = ""

    @property
    def human(self) -> bool:
        """A person changed the filters' verdict."""
        return self.auto is not None and self.keep != self.auto


def parse_decision(word: str, where: str) -> bool:
    w = word.strip().lower()
    if w in KEEP_WORDS:
        return True
    if w in REJECT_WORDS:
        return False
    raise ValueError(f"{where}: decision {word!r} is neither keep nor reject")


def read_review_list(path: str | os.PathLike) -> dict[str, Decision]:
    """{file name: Decision} from a review list (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"review list {path} does not exist (run the curation first: it writes one)")
    lines = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines() if not ln.lstrip().startswith("#")]
    rows = list(csv.reader(lines))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return {}
    header = [c.strip().lower() for c in rows[0]]
    if "file" in header and "decision" in header:
        fi, di = header.index("file"), header.index("decision")
        ai = header.index("auto") if "auto" in header else None
        ri = header.index("reason") if "reason" in header else None
        body = rows[1:]
        first = 2
    else:  # a bare "file,decision" list without a header
        fi, di, ai, ri, body, first = 0, 1, None, None, rows, 1
    out = {}
    for n, row in enumerate(body):
        where = f"{path.name} row {n + first}"
        if len(row) <= max(fi, di):
            raise ValueError(f"{where}: expected 'file,decision', got {','.join(row)!r}")
        name = row[fi].strip()
        auto = None
        if ai is not None and len(row) > ai and row[ai].strip():
            auto = parse_decision(row[ai], where)
        reason = row[ri].strip() if ri is not None and len(row) > ri else ""
        out[name] = Decision(parse_decision(row[di], where), auto, reason)
    return out


def review_rows(result: CurationResult, previous: Optional[dict[str, Decision]] = None) -> list[dict]:
    removed = {r.name: f"{r.filter}: {r.reason}" for r in result.removed}
    rows = []
    for info in result.images:
        auto = info.name not in removed
        keep = auto
        old = (previous or {}).get(info.name)
        if old is not None and old.human:
            keep = old.keep  # a person's decision survives a re-run
        rows.append({"file": info.name, "decision": "keep" if keep else "reject",
                     "auto": "keep" if auto else "reject", "reason": removed.get(info.name, "")})
    return rows


def write_review_list(path: str | os.PathLike, result: CurationResult, keep_human: bool = True) -> int:
    """Write (atomically) the review list; returns how many human decisions from an existing list were kept."""
    from ..atomic import write_atomic

    path = Path(path)
    previous = read_review_list(path) if (keep_human and path.is_file()) else None
    rows = review_rows(result, previous)
    buf = io.StringIO()
    buf.write(f"# Emu review list for {result.folder}\n"
              "# Edit 'decision' (keep or reject) per file; the tuning uses exactly the files marked keep.\n"
              "# 'auto' and 'reason' are what the automatic filters said. Lines starting with # are ignored.\n")
    writer = csv.DictWriter(buf, REVIEW_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, lambda h: h.write(buf.getvalue()), binary=False)
    return sum(1 for r in rows if r["decision"] != r["auto"])


def apply_review(names: Iterable[str], review: dict[str, Decision]) -> tuple[list[str], list[tuple[str, str]]]:
    """(names marked keep, [(name, why not used)]) in the order given."""
    kept, skipped = [], []
    for name in names:
        d = review.get(name)
        if d is None:
            skipped.append((name, "not in the review list (run the curation again to review it)"))
        elif not d.keep:
            skipped.append((name, "rejected in the review list" + (f" ({d.reason})" if d.reason else "")))
        else:
            kept.append(name)
    return kept, skipped


# ---- the contact sheet ----------------------------------------------------------------------------------
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


# ---- scorers the user provides ---------------------------------------------------------------------------
def aesthetic_head(state_dict: dict):
    """The LAION aesthetic predictor head (improved-aesthetic-predictor: Linear 768-1024-128-64-16-1 with
    dropouts and NO activations in between) from its state dict, keys "layers.<i>.weight/bias" (or any prefix).
    Input: L2-normalised CLIP ViT-L/14 image embeddings; output: a score on a 1-10 scale."""
    import torch
    from torch import nn

    weights = sorted((k for k in state_dict if k.endswith(".weight") and state_dict[k].ndim == 2),
                     key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
    if not weights:
        raise ValueError("not an aesthetic predictor: no linear layers in the file")
    layers = []
    for k in weights:
        w = state_dict[k].float()
        lin = nn.Linear(w.shape[1], w.shape[0], bias=k[:-7] + ".bias" in state_dict)
        with torch.no_grad():
            lin.weight.copy_(w)
            if lin.bias is not None:
                lin.bias.copy_(state_dict[k[:-7] + ".bias"].float())
        layers.append(lin)
    for a, b in zip(layers, layers[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"not a stack of linear layers: {a.out_features} outputs feed {b.in_features} inputs")
    if layers[-1].out_features != 1:
        raise ValueError(f"the last layer gives {layers[-1].out_features} values, not one score")
    return nn.Sequential(*layers).eval()
