"""Measuring EMMA in the world: sample through ComfyUI with the pack's nodes, read the pictures, count.

Every picture is made by an API graph of stock and pack nodes run by ComfyUI's own executor in this process
(CheckpointLoaderSimple, Load ELLA Connector, Load flan-T5 Encoder, ELLA Text Encode, Load EMMA Module, Load
EMMA Features, EMMA Condition, EMMA Assemble, KSampler, VAE Decode, Save Image; no Apply ELLA/EMMA to Model:
the conditioning carries the per-call wrapper as a hook, as in the shipped workflow): the
assembly and the per-call sampling wrapper are the ones users run. The reader (reader.py) grades each picture
against what its prompt asked for: an attribute no input names gets a random target, so its accuracy shows
the chance level the model falls to when nothing steers it.

A Case is one picture: the caption, the references (object: shape, colour, seed; style: background, seed),
the module weights and ranges, and the target attributes. Cases that share a caption and settings run as one
batch (features files hold one row per picture; the latent batch gives each row its own noise).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import features as world_features
from . import scene as world
from .reader import read

ATTRIBUTES = ("shape", "colour", "background")
CHANCE = {"shape": 1 / len(world.SHAPES), "colour": 1 / len(world.COLOURS), "background": 1 / len(world.BACKGROUNDS)}


@dataclass(frozen=True)
class Sampling:
    """KSampler settings of every evaluation picture (fixed before any measurement)."""

    steps: int = 15
    cfg: float = 5.0
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    size: int = world.SIZE


@dataclass(frozen=True)
class ModuleUse:
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class Case:
    caption: str
    target: tuple[str, str, str]                      # shape, colour, background the picture should show
    object_ref: Optional[tuple[str, str, int]] = None  # shape, colour, seed of the object reference
    style_ref: Optional[tuple[str, int]] = None        # background, seed of the background patch
    object_use: ModuleUse = ModuleUse()
    style_use: ModuleUse = ModuleUse()
    other_shape: bool = False                          # the object reference shows another shape than the text
    adapter_scale: Optional[float] = None              # the object reference goes to the IP-Adapter peer instead

    def group(self) -> tuple:
        return (self.caption, self.object_ref is not None, self.style_ref is not None, self.object_use,
                self.style_use, self.adapter_scale)


@dataclass
class WorldModels:
    """File names under the world's models root (ComfyUI folders), as the loaders list them."""

    checkpoint: str
    ella: str
    t5: str
    object_module: Optional[str] = None
    style_module: Optional[str] = None
    adapter: Optional[str] = None  # the IP-Adapter peer's file, a path (no pack model; devtools/world/ipadapter.py)


# ---- the graph ----------------------------------------------------------------------------------------------
def api_graph(models: WorldModels, caption: str, batch: int, seed: int, sampling: Sampling,
              object_features: Optional[str] = None, style_features: Optional[str] = None,
              object_use: ModuleUse = ModuleUse(), style_use: ModuleUse = ModuleUse(),
              prefix: str = "world", adapter_scale: Optional[float] = None) -> dict:
    """The API graph of one batch (the shipped UI workflow workflows/emma_world_assembled.json is the same
    graph with one picture). adapter_scale: the object features go to the IP-Adapter peer (the model patched
    by EMMAWorldIPAdapter at that scale) instead of the object module."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": models.checkpoint}},
        "ella": {"class_type": "EMMALoadELLA", "inputs": {"ella_name": models.ella}},
        "t5": {"class_type": "EMMALoadT5", "inputs": {"t5_name": models.t5, "precision": "auto",
                                                      "keep_loaded": True}},
        "pos": {"class_type": "EMMATextEncode", "inputs": {"ella": ["ella", 0], "t5": ["t5", 0], "text": caption,
                                                           "length": "flexible"}},
        "neg": {"class_type": "EMMATextEncode", "inputs": {"ella": ["ella", 0], "t5": ["t5", 0], "text": "",
                                                           "length": "flexible"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": sampling.size, "height": sampling.size,
                                                                "batch_size": batch}},
    }
    positive, negative, conditions, model = ["pos", 0], ["neg", 0], None, ["ckpt", 0]
    if adapter_scale is not None:
        if models.adapter is None or object_features is None:
            raise ValueError("the adapter rows need the adapter's file and object features")
        g["adapter_features"] = {"class_type": "EMMALoadFeatures", "inputs": {"features_name": object_features}}
        g["adapter"] = {"class_type": "EMMAWorldIPAdapter", "inputs": {
            "model": model, "adapter_path": models.adapter, "features": ["adapter_features", 0],
            "scale": adapter_scale}}
        model, object_features = ["adapter", 0], None
    for key, module, feats, use in (("object", models.object_module, object_features, object_use),
                                    ("style", models.style_module, style_features, style_use)):
        if feats is None:
            continue
        g[f"{key}_module"] = {"class_type": "EMMALoadModule", "inputs": {"module_name": module}}
        g[f"{key}_features"] = {"class_type": "EMMALoadFeatures", "inputs": {"features_name": feats}}
        inputs = {"module": [f"{key}_module", 0], "features": [f"{key}_features", 0], "weight": use.weight,
                  "start": use.start, "end": use.end}
        if conditions is not None:
            inputs["conditions"] = conditions
        g[f"{key}_condition"] = {"class_type": "EMMACondition", "inputs": inputs}
        conditions = [f"{key}_condition", 0]
    if conditions is not None:
        g["assemble"] = {"class_type": "EMMAAssemble", "inputs": {"positive": positive, "negative": negative,
                                                                  "conditions": conditions,
                                                                  "apply_to_negative": False}}
        positive, negative = ["assemble", 0], ["assemble", 1]
    g["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent_image": ["latent", 0],
        "seed": seed, "steps": sampling.steps, "cfg": sampling.cfg, "sampler_name": sampling.sampler,
        "scheduler": sampling.scheduler, "denoise": 1.0}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    return g


def reference_pictures(cases: Sequence[Case], size: int = world.SIZE) -> tuple[list, list]:
    objects = [world.object_reference(*c.object_ref, size) for c in cases if c.object_ref is not None]
    styles = [world.background_patch(*c.style_ref, size) for c in cases if c.style_ref is not None]
    return objects, styles


def batch_seed(cases: Sequence[Case]) -> int:
    """The KSampler seed of a batch: a hash of its cases (evaluation-only numbers; training draws its noise
    from its own generators and never runs KSampler)."""
    digest = hashlib.sha256(json.dumps([asdict(c) for c in cases], sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:6], "little")


def run_batch(models: WorldModels, cases: Sequence[Case], sampling: Sampling, features_dir: Path,
              features_folder_name: str = "eval") -> list[np.ndarray]:
    """Pictures ([H, W, 3] uint8, as saved) of cases that share one group."""
    from PIL import Image

    from devtools.host import run_graph_in_process

    key = f"{batch_seed(cases):012x}"
    object_pictures, style_pictures = reference_pictures(cases, sampling.size)
    names = {}
    for kind, pictures in (("object", object_pictures), ("style", style_pictures)):
        if pictures:
            encoder = hashlib.sha256(world_features.ENCODERS[kind][1].encode()).hexdigest()[:8]
            path = features_dir / f"{key}-{kind}-{encoder}.safetensors"  # a new encoder version, new files
            if not path.is_file():
                world_features.write_features(kind, pictures, path)
            names[kind] = f"{features_folder_name}/{path.name}"
    first = cases[0]
    graph = api_graph(models, first.caption, len(cases), batch_seed(cases), sampling, names.get("object"),
                      names.get("style"), first.object_use, first.style_use, prefix=f"world/{key}",
                      adapter_scale=first.adapter_scale)
    result = run_graph_in_process(graph)
    out = []
    for image in result["outputs"]["save"]["images"]:
        with Image.open(result["output_dir"] / image.get("subfolder", "") / image["filename"]) as picture:
            out.append(np.asarray(picture.convert("RGB")))
    if len(out) != len(cases):
        raise RuntimeError(f"the graph saved {len(out)} pictures for {len(cases)} cases")
    return out


# ---- statistics ---------------------------------------------------------------------------------------------
def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


VALUES = {"shape": world.SHAPES, "colour": world.COLOURS, "background": world.BACKGROUNDS}
NONE = "none"  # what the reader found when it found no object


@dataclass
class Score:
    """Accuracy per attribute, and the confusion table behind it: confusion[attribute][wanted][read] counts."""

    n: int = 0
    confusion: dict = field(default_factory=lambda: {a: {} for a in ATTRIBUTES})

    def add(self, target: Sequence[str], reading) -> None:
        self.n += 1
        for attribute, wanted in zip(ATTRIBUTES, target):
            row = self.confusion[attribute].setdefault(wanted, {})
            read = reading.get(attribute) or NONE
            row[read] = row.get(read, 0) + 1

    def correct(self, attribute: str) -> int:
        return sum(row.get(wanted, 0) for wanted, row in self.confusion[attribute].items())

    def per_value(self, attribute: str) -> dict:
        """{wanted value: {"n", "accuracy", "interval"}} in the world's order of values."""
        out = {}
        for value in VALUES[attribute]:
            row = self.confusion[attribute].get(value, {})
            n, hit = sum(row.values()), row.get(value, 0)
            if n:
                out[value] = {"n": n, "accuracy": hit / n, "interval": wilson(hit, n)}
        return out

    def summary(self) -> dict:
        return {"n": self.n, **{a: {"accuracy": self.correct(a) / self.n if self.n else None,
                                    "interval": wilson(self.correct(a), self.n),
                                    "per_value": self.per_value(a), "confusion": self.confusion[a]}
                                for a in ATTRIBUTES}}


def evaluate(models: WorldModels, cases: Sequence[Case], sampling: Sampling, features_dir: Path,
             batch: int = 25, progress=None) -> tuple[list[np.ndarray], list]:
    """Pictures and readings of `cases`, in their order."""
    groups: dict[tuple, list[int]] = {}
    for index, case in enumerate(cases):
        groups.setdefault(case.group(), []).append(index)
    pictures: list = [None] * len(cases)
    done = 0
    for indices in groups.values():
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch]
            for i, picture in zip(chunk, run_batch(models, [cases[i] for i in chunk], sampling, features_dir)):
                pictures[i] = picture
            done += len(chunk)
            if progress is not None:
                progress(done, len(cases))
    return pictures, [read(p) for p in pictures]


def score(cases: Sequence[Case], readings: Sequence, where=lambda case: True) -> dict:
    s = Score()
    for case, reading in zip(cases, readings):
        if where(case):
            s.add(case.target, reading)
    return s.summary()
