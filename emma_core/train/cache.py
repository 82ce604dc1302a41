"""The feature cache: everything the trainer reads, computed once from the dataset folder.

Per usable image: the VAE latents (model space, i.e. already scaled as the UNet sees them), the T5 features
of its caption, and the condition features of the module's kind (face embedding, CLIP tokens + mask,
style embedding) of the image or of its reference (dataset.py), or read from the reference's features file.
Stored as .safetensors shards under

    <cache_root>/<key>/manifest.json        which item lives in which shard, what was skipped and why
                       shard-00000.safetensors ...
                       empty_text.safetensors  T5 features of "" (text dropout / the CFG negative)

`key` hashes the encoders' fingerprint (model files, resolution, modality, text length), so changing any of
them starts a new cache next to the old one, and the same settings reuse it across runs. Building is
resumable: shards are written atomically and the manifest is rewritten after each one, so a killed build
continues where the last shard ended; an item whose image, caption or mask changed is re-encoded.
The trainer reads only this cache (no image decoding, no encoders in the training loop).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..adapters import Features
from ..atomic import remove_stale_temporaries, save_safetensors_atomic, write_json_atomic
from ..features_file import load_features
from .augment import reference_views
from .buckets import nearest_bucket
from .dataset import DatasetItem, load_image, load_mask, load_whole, open_picture

log = logging.getLogger(__name__)

FORMAT = "emma-feature-cache"
VERSION = 1
HALF_KEYS = ("text", "cond.hidden")  # the large ones, stored in fp16


@dataclass
class CacheEncoders:
    """The frozen encoders, as callables (the front ends build them from ComfyUI / emma_core objects).

    encode_text(caption) -> [N, D] T5 features
    encode_image(image [1, H, W, 3] in [0, 1]) -> [1, C, h, w] latents in model space
    encode_condition(image, mask or None) -> Features (batch 1); raise ValueError (e.g. FaceError) to skip;
        None when there is no encoder (every item must then bring a features file)
    fingerprint: JSON-able description of the encoders and settings; part of the cache key
    feature_kind: the kind of features the module takes (features files must match it)
    encoder_name: what makes the features, for the module's metadata (e.g. "CLIP ViT-H/14 <file>")
    buckets: each picture at its own aspect (buckets.nearest_bucket), the features from the whole picture or
        its reference; otherwise square centre crops at `resolution` (features from the crop)
    reference_views: augmented views of each reference encoded beside it (augment.py); 0 = none
    """

    encode_text: Callable[[str], torch.Tensor]
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    encode_condition: Optional[Callable[[torch.Tensor, Optional[torch.Tensor]], Features]]
    fingerprint: dict
    resolution: int = 512
    use_masks: bool = False
    feature_kind: str = ""
    encoder_name: str = ""
    buckets: bool = False
    reference_views: int = 0


def cache_key(fingerprint: dict) -> str:
    blob = json.dumps({"format": FORMAT, "version": VERSION, **fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stored(name: str, tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().float().cpu()
    return tensor.half() if name in HALF_KEYS else tensor


@dataclass
class CacheReport:
    folder: Path
    items: int
    encoded: int          # encoded in this call (the rest came from an earlier run)
    skipped: list         # [(name, reason)] including the dataset scan's
    buckets: dict = None  # {"WxH": images} of the usable items

    def text(self) -> str:
        lines = [f"feature cache {self.folder}: {self.items} items ({self.encoded} encoded now, "
                 f"{self.items - self.encoded} reused)"]
        if self.buckets:
            lines.append("buckets (width x height: images): " + ", ".join(
                f"{size}: {n}" for size, n in sorted(self.buckets.items(), key=lambda kv: -kv[1])))
        if self.skipped:
            lines.append(f"{len(self.skipped)} images skipped:")
            lines += [f"  {n}: {r}" for n, r in self.skipped]
        return "\n".join(lines)


def build_cache(items: Sequence[DatasetItem], cache_root: str | os.PathLike, encoders: CacheEncoders,
                shard_size: int = 64, progress: Optional[Callable[[int, int], None]] = None,
                scan_skipped: Sequence = ()) -> CacheReport:
    """Encode the items not yet cached; returns where the cache is and what was skipped."""
    folder = Path(cache_root) / cache_key(encoders.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    manifest_path = folder / "manifest.json"
    manifest = {"format": FORMAT, "version": VERSION, "fingerprint": encoders.fingerprint,
                "items": {}, "skipped": {}}
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("format") == FORMAT and old.get("version") == VERSION:
            manifest["items"] = {k: v for k, v in old.get("items", {}).items() if (folder / v["shard"]).is_file()}
            manifest["skipped"] = old.get("skipped", {})
    if not (folder / "empty_text.safetensors").is_file():
        save_safetensors_atomic(folder / "empty_text.safetensors", {"text": _stored("text", encoders.encode_text(""))}, {})

    def done(item: DatasetItem) -> bool:
        fp = item.fingerprint()
        entry = manifest["items"].get(item.name) or manifest["skipped"].get(item.name)
        return entry is not None and entry.get("fingerprint") == fp

    todo = [item for item in items if not done(item)]
    shard_numbers = [int(v["shard"][6:11]) for v in manifest["items"].values()]
    next_shard = max(shard_numbers, default=-1) + 1
    pending: dict[str, torch.Tensor] = {}
    pending_rows: list[tuple[DatasetItem, int]] = []
    encoders_used: dict[str, str] = {}

    def flush():
        nonlocal next_shard, pending, pending_rows
        if not pending_rows:
            return
        shard = f"shard-{next_shard:05d}.safetensors"
        save_safetensors_atomic(folder / shard, pending, {"format": FORMAT, "items": json.dumps([i.name for i, _ in pending_rows])})
        for item, row in pending_rows:
            manifest["items"][item.name] = {"fingerprint": item.fingerprint(), "shard": shard, "row": row,
                                            "caption": item.caption, "encoder": encoders_used[item.name][0],
                                            "bucket": encoders_used[item.name][1]}
            manifest["skipped"].pop(item.name, None)
        write_json_atomic(manifest_path, manifest)
        next_shard += 1
        pending, pending_rows = {}, []

    encoded = 0
    for n, item in enumerate(todo):
        try:
            size = (encoders.resolution, encoders.resolution)
            if encoders.buckets:
                size = nearest_bucket(*open_picture(item.image).size, encoders.resolution)
            image = load_image(item.image, size)
            with torch.no_grad():
                views, encoder = _condition(item, image, encoders)
                latents = encoders.encode_image(image)
                text = encoders.encode_text(item.caption)
        except ValueError as error:  # FaceError is a ValueError: "no face found in ..."
            manifest["skipped"][item.name] = {"fingerprint": item.fingerprint(), "reason": str(error)}
            manifest["items"].pop(item.name, None)
            log.info("EMMA training: skipping %s: %s", item.name, error)
        else:
            row = len(pending_rows)
            encoders_used[item.name] = (encoder, f"{size[0]}x{size[1]}")
            pending[f"{row}.latents"] = _stored("latents", latents[0])
            pending[f"{row}.text"] = _stored("text", text)
            for key, tensor in views[0].tensors.items():
                pending[f"{row}.cond.{key}"] = _stored(f"cond.{key}", tensor[0])
            for key in views[0].tensors if len(views) > 1 else ():
                pending[f"{row}.view.{key}"] = _stored(f"cond.{key}", torch.cat([v.tensors[key] for v in views[1:]]))
            pending_rows.append((item, row))
            encoded += 1
            if len(pending_rows) >= shard_size:
                flush()
        if progress is not None:
            progress(n + 1, len(todo))
    flush()
    write_json_atomic(manifest_path, manifest)
    names = {i.name for i in items}
    skipped = list(scan_skipped) + [(k, v["reason"]) for k, v in sorted(manifest["skipped"].items()) if k in names]
    usable = [manifest["items"][i.name] for i in items if i.name in manifest["items"]]
    if not usable:
        raise ValueError("no usable images after encoding:\n" + "\n".join(f"  {n}: {r}" for n, r in skipped))
    buckets: dict = {}
    for entry in usable:
        buckets[entry.get("bucket", "")] = buckets.get(entry.get("bucket", ""), 0) + 1
    return CacheReport(folder, len(usable), encoded, skipped, buckets if encoders.buckets else None)


def _condition(item: DatasetItem, image: torch.Tensor, encoders: CacheEncoders) -> tuple[list[Features], str]:
    """The item's condition features (batch 1): the reference's, then those of its augmented views (none for a
    features file); and the name of what made them."""
    if item.has_features_file:
        try:
            features, meta = load_features(str(item.reference))
        except ValueError as error:  # WeightsFileError: not a features file, unreadable
            raise ValueError(f"reference features {item.reference.name}: {error}") from error
        if encoders.feature_kind and features.kind != encoders.feature_kind:
            raise ValueError(f"reference features {item.reference.name} are {features.kind!r} features; this "
                             f"module takes {encoders.feature_kind!r}")
        if features.batch != 1:
            raise ValueError(f"reference features {item.reference.name} hold {features.batch} rows; one per "
                             "image is expected")
        return [features], str(meta.get("encoder", ""))
    if encoders.encode_condition is None:
        raise ValueError(f"no reference features file ({Path(item.image).stem}_ref.safetensors) and no encoder "
                         "to compute them: give the encoder (CLIP Vision, an InsightFace pack) or the files")
    mask = None
    if encoders.buckets:  # the whole picture (or reference), not the training crop
        source = load_whole(item.reference or item.image, encoders.resolution)
        if item.mask is not None and encoders.use_masks:
            mask = load_mask(item.mask, encoders.resolution, whole=True)
            if mask.shape[1:] != source.shape[1:3]:
                mask = torch.nn.functional.interpolate(mask[:, None], size=source.shape[1:3], mode="bilinear")[:, 0]
    else:
        source = image if item.reference is None else load_image(item.reference, encoders.resolution)
        if item.mask is not None and encoders.use_masks:
            mask = load_mask(item.mask, encoders.resolution)
    views = [encoders.encode_condition(v, m) for v, m in reference_views(source, mask, encoders.reference_views,
                                                                             item.name)]
    for n, view in enumerate(views[1:], start=1):
        for key, tensor in views[0].tensors.items():
            if key not in view.tensors:
                if key != "mask":
                    raise ValueError(f"view {n} of the reference has no {key!r} features")
                # the view cropped the painted part of the mask away: an empty mask means the whole picture
                view.tensors["mask"] = torch.ones_like(tensor)
    return views, encoders.encoder_name


class CachedDataset:
    """Read-only view of a cache: sample(i) -> {"latents", "text", "features": {name: tensor}, "index"}."""

    def __init__(self, folder: str | os.PathLike, names: Optional[Sequence[str]] = None):
        from safetensors import safe_open

        self.folder = Path(folder)
        manifest = json.loads((self.folder / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.folder} is not an EMMA feature cache")
        self.fingerprint = manifest["fingerprint"]
        entries = manifest["items"]
        # Sorted names: the sample order (and so the data order) does not depend on how the cache was built.
        self.names = sorted(n for n in (names if names is not None else entries) if n in entries)
        self.entries = [entries[n] for n in self.names]
        self._open = safe_open
        self._handles: dict = {}
        with safe_open(str(self.folder / "empty_text.safetensors"), framework="pt") as f:
            self.empty_text = f.get_tensor("text").float()

    def __len__(self) -> int:
        return len(self.names)

    def _handle(self, shard: str):
        if shard not in self._handles:
            self._handles[shard] = self._open(str(self.folder / shard), framework="pt")
        return self._handles[shard]

    def sample(self, index: int) -> dict:
        entry = self.entries[index]
        f = self._handle(entry["shard"])
        row = entry["row"]
        prefix = f"{row}."
        features = {key[len(prefix) + 5:]: f.get_tensor(key).float() for key in f.keys()
                    if key.startswith(prefix + "cond.")}
        views = {key[len(prefix) + 5:]: f.get_tensor(key).float() for key in f.keys()
                 if key.startswith(prefix + "view.")}
        out = {"latents": f.get_tensor(prefix + "latents").float(), "text": f.get_tensor(prefix + "text").float(),
               "features": features, "index": index}
        if views:
            out["views"] = views  # augmented views of the reference: {name: [V, ...]}
        return out

    def shape_groups(self) -> list[list[int]]:
        """Indices grouped by bucket, in index order; one group for a cache built without buckets (its entries
        all share the resolution, whether or not they record it)."""
        if not self.fingerprint.get("buckets"):
            return [list(range(len(self.entries)))]
        groups: dict = {}
        for i, entry in enumerate(self.entries):
            groups.setdefault(entry.get("bucket", ""), []).append(i)
        return list(groups.values())

    def feature_kind(self) -> str:
        return self.fingerprint.get("feature_kind", "")

    def feature_encoder(self) -> str:
        """What made the features of these items (one name; several different ones are an error)."""
        names = sorted({e.get("encoder", "") for e in self.entries})
        if len(names) > 1:
            raise ValueError(f"the dataset mixes features from different encoders ({', '.join(map(repr, names))}); "
                             "a module must be trained on one encoder's features")
        return names[0] if names else ""


class Subset:
    def __init__(self, base, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)
        self.empty_text = getattr(base, "empty_text", None)

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, index: int) -> dict:
        return dict(self.base.sample(self.indices[index]), index=self.indices[index])

    def shape_groups(self) -> list[list[int]]:
        """The base's groups, in this subset's indices."""
        if not hasattr(self.base, "shape_groups"):
            return [list(range(len(self.indices)))]
        where = {b: i for i, b in enumerate(self.indices)}
        groups = [[where[b] for b in g if b in where] for g in self.base.shape_groups()]
        return [g for g in groups if g]


def split_validation(count: int, fraction: float, seed: int = 0, minimum: int = 1) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a fixed random `fraction` held out (at least `minimum` when
    fraction > 0 and at least 2 samples), chosen by `seed`, so every run and every resume agree."""
    if fraction <= 0 or count < 2:
        return list(range(count)), []
    held = max(minimum, round(count * fraction))
    held = min(held, count - 1)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(order[:held])
    val_set = set(val)
    return [i for i in range(count) if i not in val_set], val
