"""The codec's ceiling: how well the reader reads world pictures after the VAE alone (no UNet).

A base can draw no better than its codec lets the reader see, so this is the bar's upper bound at a picture
size, an object size and a decoder (docs/world.md, "Toward a base that draws shapes"):

    python -m devtools.world ceiling --size 64                       # the initial (untrained) decoder
    python -m devtools.world ceiling --size 64 --decoder .cache/world/full/models/vae_approx/taesd_decoder.safetensors
    python -m devtools.world ceiling --size 48 --object-side 0.62 0.78

The pictures are `n` scenes over all combinations (every attribute value equally often when n is a multiple of
96), read as drawn and after encoding and decoding.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np

from . import scene as world
from .evaluate import ATTRIBUTES, Score


def ceiling(size: int, object_side: tuple[float, float] = world.OBJECT_SIDE, decoder_file: Optional[Path] = None,
            n: int = 192) -> dict:
    """{"pictures": summary, "decoded": summary} (evaluate.Score summaries) for `n` pictures."""
    import torch

    from . import codec, reader

    decoder = codec.load_decoder(decoder_file)
    scenes = [world.Scene(*world.ALL_COMBINATIONS[i % len(world.ALL_COMBINATIONS)], seed=i) for i in range(n)]
    pictures = torch.from_numpy(np.stack([world.render(s, size, object_side) for s in scenes]))
    with torch.no_grad():
        decoded = codec.decode(decoder, codec.encode(codec.fixed_encoder(), pictures)).numpy()
    out = {}
    for name, batch in (("pictures", pictures.numpy()), ("decoded", decoded)):
        score = Score()
        for s, picture in zip(scenes, batch):
            score.add(s.combination, reader.read(picture))
        out[name] = score.summary()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.world ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=world.SIZE)
    parser.add_argument("--object-side", type=float, nargs=2, default=world.OBJECT_SIDE, metavar=("LOW", "HIGH"))
    parser.add_argument("--decoder", type=Path, help="a taesd_decoder.safetensors (default: the initial decoder)")
    parser.add_argument("--n", type=int, default=192)
    args = parser.parse_args(argv)
    from devtools.host import import_comfy

    import_comfy(builtin_nodes=False)
    result = ceiling(args.size, tuple(args.object_side), args.decoder, args.n)
    for name, summary in result.items():
        line = {a: round(summary[a]["accuracy"], 3) for a in ATTRIBUTES}
        per_shape = {v: round(x["accuracy"], 2) for v, x in summary["shape"]["per_value"].items()}
        print(f"{name}: {json.dumps(line)} shape per value {json.dumps(per_shape)}")
    return 0
