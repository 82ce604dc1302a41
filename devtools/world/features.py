"""The world's reference encoders: fixed functions of the pixels (nothing learned), standing in for CLIP.

No CLIP weights exist on these machines, and a random CLIP ViT-H would only add noise (and 6 s per picture on
two cores), so the world's modules read what two fixed encoders compute. They produce the tensor layouts of
the pack's feature kinds, and every features file and module says which encoder made its features:

- OBJECT_ENCODER ("clip_tokens" layout: hidden [B, 65, 6], embeds [B, 6]): the reference cut into an 8x8 grid
  of 8 px cells; a token per cell with the cell's mean and standard deviation of r, g, b, after one token of the
  same statistics over the whole picture (where CLIP puts its CLS token); embeds = that whole-picture token.
  A patch embedding without a transformer: the module has to find the object among the cells itself.
- STYLE_ENCODER ("style" layout: embeds [B, 66]): the reference's grey levels' Fourier magnitudes at the 8x8
  lowest frequencies (DC removed, divided by the pixel count), plus their mean and spread: translation
  invariant, so a pattern reads the same at any phase, as a style descriptor should. Version 2 takes
  log(1 + 64 m) of each magnitude m. Raw magnitudes are tiny (mean 0.014, largest spread across patches
  0.08, against a mean of 0.35 for the object features; v2: largest spread 0.96), so the module's first
  linear layer saw almost nothing, and a style module trained as long as the object module left pictures
  unchanged although a linear probe reads the ground from v1 at 0.994. The log also weighs the weak
  harmonics that tell dots from checks about as much as the fundamental; 64 puts a full-contrast
  fundamental near 2. A fixed choice made before training, never fitted to results.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from emma_core.adapters import Features
from emma_core.features_file import save_features
from emma_core.train.preview import thumbnail_b64

from .scene import to_uint8

OBJECT_ENCODER = "world-cells-v1 (fixed 8x8-cell colour statistics; not CLIP)"
STYLE_ENCODER = "world-spectrum-v2 (fixed log Fourier magnitudes of the grey levels; not CLIP)"
CELL = 8
FREQUENCIES = 8
SPECTRUM_GAIN = 64.0


def object_features(pictures: Sequence[np.ndarray]) -> Features:
    """Object references [H, W, 3] -> 'clip_tokens' features, one row per picture."""
    rows, globals_ = [], []
    for picture in pictures:
        p = np.asarray(picture, np.float32)
        h, w, _ = p.shape
        cells = p.reshape(h // CELL, CELL, w // CELL, CELL, 3).transpose(0, 2, 1, 3, 4).reshape(-1, CELL * CELL, 3)
        tokens = np.concatenate([cells.mean(1), cells.std(1)], axis=-1)            # [64, 6]
        whole = np.concatenate([p.reshape(-1, 3).mean(0), p.reshape(-1, 3).std(0)])  # [6]
        rows.append(np.concatenate([whole[None], tokens], 0))
        globals_.append(whole)
    return Features("clip_tokens", {"hidden": torch.from_numpy(np.stack(rows)).float(),
                                    "embeds": torch.from_numpy(np.stack(globals_)).float()})


def style_features(pictures: Sequence[np.ndarray]) -> Features:
    """Background patches [H, W, 3] -> 'style' features, one row per picture."""
    rows = []
    for picture in pictures:
        grey = np.asarray(picture, np.float32).mean(-1)
        spectrum = np.abs(np.fft.fft2(grey - grey.mean())) / grey.size
        magnitudes = np.log1p(SPECTRUM_GAIN * spectrum[:FREQUENCIES, :FREQUENCIES].reshape(-1))
        rows.append(np.concatenate([magnitudes, [grey.mean(), grey.std()]]))
    return Features("style", {"embeds": torch.from_numpy(np.stack(rows)).float()})


ENCODERS = {"object": (object_features, OBJECT_ENCODER), "style": (style_features, STYLE_ENCODER)}


def write_features(kind: str, pictures: Sequence[np.ndarray], path: Path, extra: dict | None = None) -> Path:
    """An EMMA features file (what Save EMMA Features writes, loaded by Load EMMA Features) of the references,
    naming the encoder, with a thumbnail of the first reference for training previews."""
    from PIL import Image

    encode, name = ENCODERS[kind]
    meta = {"encoder": name, "thumbnail": thumbnail_b64(Image.fromarray(to_uint8(pictures[0]))), **(extra or {})}
    save_features(encode(pictures), str(path), meta)
    return Path(path)


def describe(meta: dict) -> str:
    return json.dumps({k: v for k, v in meta.items() if k != "thumbnail"})
