"""One UMM-Diffusion projector's training as one job: the loaded frozen models, the dataset folder, the subject word
and the settings; run_umm_job does the rest. The UMM Train Projector node and scripts/train_umm.py only load their
models and map their arguments here, so they cannot drift apart.

    job = UMMTrainingJob(dataset="my_dog/", subject_word="dog", out_path=..., run_dir=..., config=TrainConfig(...),
                         vae=vae, base_model=model, clip=clip, clip_vision=clip_vision)
    out = run_umm_job(job, on_step=...)          # -> UMMTrainOutput

What run_umm_job does, in order: scan the folder (dataset.scan_dataset: images with same-name .txt captions; the
subject picture is `<name>_ref.<image>`, else the image itself; a `<name>_ref.safetensors` holds style features
saved by Save EMMA Features); keep the images whose caption contains the subject word (the others are reported as
skipped; none left is a SubjectWordError); build the feature cache (cache.build_cache under <dataset>/.emma_cache:
the VAE latents, CLIP's h_y of the caption and CLIP Vision's image_embeds of the subject picture, computed by the
emma_core.umm functions UMM Subject Encode uses, so training and inference see the same features); drop the
encoders; train the projector through the frozen UNet (train.umm.UMMTask on loop.train, resumed from run_dir);
write the projector atomically with umm.save_projector (the best validated weights when validation ran), the file
Load UMM Projector reads. One process (the projector is small).

Duck-typed models (no ComfyUI import here): vae (.encode IMAGE -> raw latents), base_model (ComfyUI's BaseModel:
.process_latent_in, and .apply_model through objective.comfy_epsilon_denoiser), clip (ComfyUI's CLIP: .tokenize,
.encode_from_tokens), clip_vision (ComfyUI's ClipVisionModel: .encode_image(IMAGE, crop=True)).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..adapters import Features
from ..clip_features import image_features
from ..umm import (ProjectorConfig, UMMProjector, clip_tokens, load_projector, save_projector, subject_embeds,
                   subject_tokens, text_states)
from .cache import CacheEncoders, CacheReport, CachedDataset, Subset, build_cache, split_validation
from .dataset import DatasetScan, scan_dataset
from .encoders import module_fingerprint
from .loop import TrainConfig, TrainResult, train
from .objective import comfy_epsilon_denoiser
from .umm import UMMTask

DEFAULTS = ProjectorConfig()
KIND = "style"  # the features a subject picture gives: CLIP Vision's global embedding (image_embeds) alone


class SubjectWordError(ValueError):
    """The subject word is empty, or no caption contains it: the front ends name their input for it."""


@dataclass
class UMMTrainingJob:
    dataset: str | os.PathLike          # images + same-name .txt captions that contain the subject word
    subject_word: str                   # the caption word the subject picture replaces (e.g. "dog")
    out_path: str | os.PathLike         # the projector file (written atomically)
    run_dir: str | os.PathLike          # checkpoints, logs, loss curve; resumed from
    config: TrainConfig
    vae: object
    base_model: object                  # for the cache (process_latent_in) and, without load_base, the training
    clip: object                        # SD1.5's CLIP text encoder (h_y and the subject word's positions)
    clip_vision: object = None          # None: every image brings <name>_ref.safetensors style features
    load_base: Optional[Callable[[], object]] = None  # after the cache: the base model ready on the device
    cache_root: Optional[str | os.PathLike] = None    # default <dataset>/.emma_cache
    resolution: int = 512
    val_fraction: float = 0.1
    noise_offset: float = 0.0
    hidden_dim: int = DEFAULTS.hidden_dim
    resume: bool = True
    clip_name: str = ""                 # provenance: the cache key and the projector file's encoder names
    vae_name: str = ""
    clip_vision_name: str = ""
    device: Optional[torch.device] = None

    def __post_init__(self):
        self.device = torch.device(self.device or "cpu")


@dataclass
class UMMTrainOutput:
    projector_path: Path
    result: TrainResult
    projector: UMMProjector
    train_count: int
    val_count: int
    cache: CacheReport


def subject_items(scan: DatasetScan, clip, subject_word: str) -> dict[str, list[int]]:
    """{image name: the subject word's token positions in its caption} for the captions that contain the word
    (in one CLIP chunk); the others go to scan.skipped with the reason."""
    word = subject_word.strip()
    if not word:
        raise SubjectWordError("the subject word is empty: give the word of the captions that names the subject "
                               "(e.g. 'dog' for 'a photo of a dog on the beach')")
    _tokens, key = clip_tokens(clip, word)  # not SD1.5's CLIP: an error for the whole job
    positions, too_long = {}, 0
    for item in scan.items:
        try:
            tokens, found = subject_tokens(clip, item.caption, word)
        except ValueError:
            scan.skipped.append((item.name, f"the caption does not contain the subject word {word!r}"))
            continue
        if len(tokens[key]) > 1:
            scan.skipped.append((item.name, "the caption is longer than CLIP's 75 tokens: shorten it"))
            too_long += 1
            continue
        positions[item.name] = found
    if too_long and not positions:
        raise ValueError(f"every caption with the subject word {word!r} is longer than CLIP's 75 tokens: shorten "
                         "them")
    if not positions:
        raise SubjectWordError(
            f"the subject word {word!r} occurs in none of the {len(scan.items)} captions in {scan.folder}: write it "
            f"into the captions (e.g. 'a photo of a {word} on the beach'), or give the word they use for the "
            "subject")
    return positions


def umm_encoders(job: UMMTrainingJob) -> CacheEncoders:
    """The cache's encoders: VAE latents in model space, h_y [T, D] of the caption, the subject picture's
    image_embeds as 'style' features ({"embeds": [1, image_dim]})."""
    clip, clip_vision, vae, base = job.clip, job.clip_vision, job.vae, job.base_model
    if job.resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 (the VAE's cell), got {job.resolution}")

    def encode_text(caption: str) -> torch.Tensor:
        return text_states(clip, clip.tokenize(caption))[0][0].float().cpu()

    def encode_image(image: torch.Tensor) -> torch.Tensor:
        return base.process_latent_in(vae.encode(image[..., :3])).float().cpu()

    encode_condition, condition = None, "features files"
    if clip_vision is not None:
        def encode_condition(image: torch.Tensor, mask=None) -> Features:
            # the one CLIP path (clip_features.image_features): its style features are image_embeds alone, the
            # output UMM Subject Encode reads through subject_embeds
            features = image_features(clip_vision, image[:1, ..., :3], KIND, crop=True)
            return Features(KIND, {"embeds": subject_embeds({"image_embeds": features.tensors["embeds"]})})

        condition = job.clip_vision_name or "clip:" + module_fingerprint(getattr(clip_vision, "model", clip_vision))
    fingerprint = {"modality": "umm", "feature_kind": KIND, "resolution": job.resolution,
                   "text": job.clip_name or module_fingerprint(getattr(clip, "cond_stage_model", clip)),
                   "vae": job.vae_name or module_fingerprint(getattr(vae, "first_stage_model", vae)),
                   "condition": condition}
    return CacheEncoders(encode_text, encode_image, encode_condition, fingerprint, job.resolution,
                         feature_kind=KIND, encoder_name=job.clip_vision_name)


class UMMSamples:
    """The cache's items as UMMTask samples: {latents, h_y, image_embeds, positions, index}."""

    def __init__(self, cached: CachedDataset, positions: dict[str, list[int]]):
        self.cached, self.empty_text = cached, None
        self.positions = [positions[name] for name in cached.names]

    def __len__(self) -> int:
        return len(self.cached)

    def sample(self, index: int) -> dict:
        s = self.cached.sample(index)
        return {"latents": s["latents"], "h_y": s["text"], "image_embeds": s["features"]["embeds"],
                "positions": self.positions[index], "index": index}


def _label(name: str, width: int, default_name: str, default_width: int, what: str) -> str:
    return name or (default_name if width == default_width else f"{what} ({width}-wide)")


def projector_config(samples: UMMSamples, job: UMMTrainingJob) -> ProjectorConfig:
    first = samples.sample(0)
    image_dim, text_dim = int(first["image_embeds"].shape[-1]), int(first["h_y"].shape[-1])
    return ProjectorConfig(
        image_dim=image_dim, text_dim=text_dim, hidden_dim=job.hidden_dim,
        image_encoder=_label(job.clip_vision_name, image_dim, DEFAULTS.image_encoder, DEFAULTS.image_dim,
                             "clip-vision"),
        text_encoder=_label(job.clip_name, text_dim, DEFAULTS.text_encoder, DEFAULTS.text_dim, "clip-text"))


def _release_encoders(job: UMMTrainingJob) -> None:
    for name in ("clip", "clip_vision"):
        encoder = getattr(job, name)
        if encoder is not None and callable(getattr(encoder, "release", None)):
            encoder.release()
        setattr(job, name, None)


def run_umm_job(job: UMMTrainingJob, *, cache_progress: Optional[Callable[[int, int], None]] = None,
                on_cache: Optional[Callable[[CacheReport], None]] = None, on_step: Optional[Callable] = None,
                should_stop: Optional[Callable] = None) -> UMMTrainOutput:
    """Train the job's projector (see the module docstring). on_cache(report) sees the cache report; on_step /
    should_stop as loop.train (should_stop may raise: the last checkpoint stays intact)."""
    scan = scan_dataset(job.dataset)
    positions = subject_items(scan, job.clip, job.subject_word)
    items = [item for item in scan.items if item.name in positions]
    report = build_cache(items, job.cache_root or os.path.join(job.dataset, ".emma_cache"), umm_encoders(job),
                         progress=cache_progress, scan_skipped=scan.skipped)
    if on_cache is not None:
        on_cache(report)
    _release_encoders(job)  # the loop reads only the cache
    samples = UMMSamples(CachedDataset(report.folder, list(positions)), positions)
    config = projector_config(samples, job)

    torch.manual_seed(job.config.seed)
    projector = UMMProjector(config).to(job.device).float().requires_grad_(True).train()
    base = job.load_base() if job.load_base is not None else job.base_model
    if isinstance(base, torch.nn.Module):
        base.requires_grad_(False)  # frozen: gradients flow through the UNet to the context, none are kept
    task = UMMTask(projector, comfy_epsilon_denoiser(base), noise_offset=job.noise_offset)
    train_idx, val_idx = split_validation(len(samples), job.val_fraction, job.config.seed)
    run_dir = Path(job.run_dir)
    best_path = run_dir / "best.safetensors"
    result = train(task, Subset(samples, train_idx), job.config, run_dir,
                   val_set=Subset(samples, val_idx) if val_idx else None, resume=job.resume, on_step=on_step,
                   on_best=lambda trained, step, val: save_projector(trained, str(best_path), training_steps=step),
                   should_stop=should_stop)
    steps = result.step
    if result.best_step is not None and best_path.is_file():
        projector.load_state_dict({k: v.to(job.device) for k, v in load_projector(str(best_path)).state_dict().items()})
        steps = result.best_step
    out = Path(job.out_path)
    save_projector(projector.eval(), str(out), training_steps=steps)
    return UMMTrainOutput(out, result, projector, len(train_idx), len(val_idx), report)
