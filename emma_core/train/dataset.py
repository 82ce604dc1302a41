"""The hand-made dataset format: a folder of images with same-name .txt captions.

    my_dataset/
        0001.jpg        0001.txt          "a woman in a red coat, street photo"
        0002.png        0002.txt
        0002_mask.png                     optional: object-centric mask (white = the object), any size
        0003.png        0003.txt
        0003_ref.png                      optional: the reference the condition features come from
        0004.png        0004.txt
        0004_ref.safetensors              optional: the reference's features, as Save EMMA Features writes them
        ...

Rules (the scan reports every file it does not use, and why):
- images: .png .jpg .jpeg .webp .bmp (any case), in the folder itself (not in sub-folders);
- the caption is the .txt file with the image's name (UTF-8, surrounding whitespace stripped); an image
  without one is skipped ("no caption file"); an empty caption is allowed (it trains the unconditional text);
- the condition features come from the image itself, or from `<name>_ref.<image>` when there is one (the
  paper's object references are the object cut out; a style reference is another picture in that style), or
  are read from `<name>_ref.safetensors` (features computed elsewhere, by any encoder; nothing is encoded);
- `<name>_mask.png` masks the picture the features come from (object / portrait modules only);
- `_mask` and `_ref` files are never training images themselves;
- unreadable or tiny images are skipped when they are loaded (the cache builder records the reason).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..stamps import files_stamp

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MASK_SUFFIX = "_mask"
REFERENCE_SUFFIX = "_ref"
FEATURES_EXTENSION = ".safetensors"
MIN_SIDE = 32


@dataclass(frozen=True)
class DatasetItem:
    name: str                # the image's file name, unique within the folder
    image: Path
    caption: str
    mask: Optional[Path] = None
    reference: Optional[Path] = None  # a picture (_ref.png ...) or a features file (_ref.safetensors)

    @property
    def condition_source(self) -> Path:
        """The picture the condition features are computed from (the reference when there is one)."""
        return self.reference if self.reference is not None else self.image

    @property
    def has_features_file(self) -> bool:
        return self.reference is not None and self.reference.suffix.lower() == FEATURES_EXTENSION

    def fingerprint(self) -> str:
        """Changes when the image, the caption, the mask or the reference changes (size + mtime + caption)."""
        return files_stamp([p for p in (self.image, self.mask, self.reference) if p is not None], self.caption)[:24]


@dataclass
class DatasetScan:
    folder: Path
    items: list[DatasetItem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)

    def report(self) -> str:
        lines = [f"{len(self.items)} usable images in {self.folder}"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} skipped:")
            lines += [f"  {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def scan_dataset(folder: str | os.PathLike) -> DatasetScan:
    folder = Path(os.path.expanduser(str(folder)))
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist (expected a folder of images with "
                                "same-name .txt captions)")
    scan = DatasetScan(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS
              and not p.stem.endswith((MASK_SUFFIX, REFERENCE_SUFFIX))]
    stems = {p.stem for p in images}
    for path in images:
        caption_path = path.with_suffix(".txt")
        if not caption_path.is_file():
            scan.skipped.append((path.name, f"no caption file ({caption_path.name})"))
            continue
        try:
            caption = caption_path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            scan.skipped.append((path.name, f"caption {caption_path.name} unreadable: {error}"))
            continue
        mask = next((m for ext in (".png", ".PNG") if (m := path.with_name(path.stem + MASK_SUFFIX + ext)).is_file()),
                    None)
        references = [p for p in files if p.stem == path.stem + REFERENCE_SUFFIX
                      and p.suffix.lower() in (*IMAGE_EXTENSIONS, FEATURES_EXTENSION)]
        if len(references) > 1:
            scan.skipped.append((path.name, f"several references ({', '.join(p.name for p in references)}): "
                                            "keep one"))
            continue
        scan.items.append(DatasetItem(path.name, path, caption, mask, references[0] if references else None))
    duplicates = {}
    for item in scan.items:
        duplicates.setdefault(Path(item.name).stem, []).append(item.name)
    for stem, names in duplicates.items():
        if len(names) > 1:  # 1.png and 1.jpg would share 1.txt: ambiguous, keep neither
            scan.items = [i for i in scan.items if i.name not in names]
            scan.skipped += [(n, f"several images share the caption {stem}.txt") for n in names]
    for path in files:
        for suffix, what, extensions in ((MASK_SUFFIX, "mask", IMAGE_EXTENSIONS),
                                         (REFERENCE_SUFFIX, "reference", (*IMAGE_EXTENSIONS, FEATURES_EXTENSION))):
            if path.stem.endswith(suffix) and path.suffix.lower() in extensions \
                    and path.stem[: -len(suffix)] not in stems:
                scan.skipped.append((path.name, f"{what} without an image of that name"))
    if not scan.items:
        raise ValueError(f"no usable images in {folder}: " + (scan.report() if scan.skipped else
                         f"put images ({', '.join(IMAGE_EXTENSIONS)}) with same-name .txt captions there"))
    return scan


def open_picture(path: Path):
    """The picture upright (EXIF) in RGB, as PIL. Raises ValueError for unreadable or too small images."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"unreadable image: {error}") from error
    if min(im.size) < MIN_SIDE:
        raise ValueError(f"too small ({im.size[0]}x{im.size[1]}; at least {MIN_SIDE} px per side)")
    return im


def load_image(path: Path, resolution: int | tuple[int, int]) -> torch.Tensor:
    """[1, H, W, 3] float in [0, 1] (ComfyUI's IMAGE layout) at `resolution` (a side, or (width, height)):
    resized to cover it, then the centre kept (for a bucket of the picture's own aspect, a sliver at most).
    Raises ValueError for unreadable or too small images."""
    from PIL import Image

    return _cover(open_picture(path), _size(resolution), Image.BICUBIC)


def load_whole(path: Path, resolution: int) -> torch.Tensor:
    """The whole picture as [1, H, W, 3], scaled to about resolution^2 pixels, nothing cut away: what the
    condition features are computed from (a face near the edge is still found)."""
    from PIL import Image

    im = open_picture(path)
    return _to_tensor(im.resize(_whole_size(im.size, resolution), Image.BICUBIC))


def load_mask(path: Path, resolution: int | tuple[int, int], whole: bool = False) -> torch.Tensor:
    """[1, H, W] float in [0, 1] (ComfyUI's MASK layout), cropped like load_image (or, whole, sized like
    load_whole of a picture of the mask's size)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L")
    if whole:
        return _to_tensor(im.resize(_whole_size(im.size, resolution), Image.BILINEAR))[..., 0]
    return _cover(im, _size(resolution), Image.BILINEAR)[..., 0]


def _size(resolution: int | tuple[int, int]) -> tuple[int, int]:
    return (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))


def _whole_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    scale = (resolution * resolution / (size[0] * size[1])) ** 0.5
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _cover(im, size: tuple[int, int], resample) -> torch.Tensor:
    w, h = im.size
    scale = max(size[0] / w, size[1] / h)
    scaled = (max(size[0], round(w * scale)), max(size[1], round(h * scale)))
    im = im.resize(scaled, resample)
    left, top = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return _to_tensor(im.crop((left, top, left + size[0], top + size[1])))


def _to_tensor(im) -> torch.Tensor:
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy())[None]
