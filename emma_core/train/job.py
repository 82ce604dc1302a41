"""One EMMA module's training as one job: the loaded frozen models, the dataset, the settings; run_job does the
rest. The front ends (the EMMA Train Module node, scripts/train_emma.py, the world's build through that script)
only load their models and map their arguments here, so they cannot drift apart.

    job = TrainingJob(modality="face", dataset=..., out_path=..., run_dir=..., config=TrainConfig(...),
                      vae=vae, base_model=model, ella=connector, t5=t5, face_analyzer=analyzer, ...)
    out = run_job(job, on_step=...)      # -> emma.EMMATrainOutput; under torchrun every process calls it

What run_job does, in order: (rank 0) build the feature cache with the encoders of encoders.comfy_encoders (face
and CLIP features through the same core functions the inference nodes use), then drop the text / condition
encoders (`.release()` when they have one: the node's T5 leaves the device before the UNet loads); share the
cache with the other processes; get the model to train against (`load_base`, default `base_model`); copy the
ELLA connector frozen onto the device (the caller's stays as it is); set up previews; train_emma_module.

Duck-typed models (no ComfyUI import here), as encoders.py describes: vae (.encode / .decode IMAGE),
base_model (ComfyUI's BaseModel: .process_latent_in / .process_latent_out, .apply_model via
objective.comfy_epsilon_denoiser), t5 (.encode(text, fixed_length)), clip_vision, face_analyzer.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..ella import ELLA
from .emma import EMMATrainOutput, prepare_cache, train_emma_module
from .encoders import TEXT_LENGTHS, comfy_encoders
from .loop import TrainConfig
from .objective import comfy_epsilon_denoiser
from .preview import PreviewSetup

log = logging.getLogger(__name__)

# The EMMA module trainer's defaults against overfitting a small set (the node, the CLI and the world use them).
# EMA is off unless asked for: on the world's object module (400 steps, docs/world.md) the averaged weights read
# colour 0.745 against 0.80 for the last weights of the same run (same cases; 14 against 3 discordant, p = 0.013).
DEFAULT_EMA = 0.0             # TrainConfig.ema_decay (e.g. 0.999: the saved module holds the averaged weights)
DEFAULT_REFERENCE_VIEWS = 4   # augmented views per object / portrait / style reference (augment.py)


@dataclass
class TrainingJob:
    modality: str                       # face | object | portrait | style
    dataset: str | os.PathLike          # images + same-name .txt captions (docs/training.md)
    out_path: str | os.PathLike         # the module file (rank 0 writes it atomically)
    run_dir: str | os.PathLike          # checkpoints, logs, loss curve, previews; resumed from
    config: TrainConfig
    vae: object
    base_model: object                  # for the cache (process_latent_in) and, without load_base, the training
    ella: object                        # the ELLA connector (nn.Module); trained against as a frozen copy
    t5: object = None                   # rank 0 only (the other processes read the cache)
    clip_vision: object = None          # object / portrait / style; None: <name>_ref.safetensors files
    face_analyzer: object = None        # face; None: <name>_ref.safetensors files
    load_base: Optional[Callable[[], object]] = None  # after the cache: the base model ready on the device
    cache_root: Optional[str | os.PathLike] = None    # default <dataset>/.emma_cache
    resolution: int = 512
    text_length: str = TEXT_LENGTHS[0]  # recorded in the module file (EMMA Assemble warns on another)
    t5_name: str = ""                   # provenance: files the cache key and the module file name
    vae_name: str = ""
    clip_vision_name: str = ""
    ella_sha256: str = ""
    val_fraction: float = 0.1
    cond_dropout: float = 0.1
    text_dropout: float = 0.1
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0          # min-SNR-gamma loss weighting (e.g. 5); 0 = off
    buckets: bool = True                # pictures at their own aspect (buckets.py); False: square centre crops
    reference_views: int = DEFAULT_REFERENCE_VIEWS  # augmented views per reference (not for faces); 0 = none
    release_models: Optional[Callable[[], None]] = None  # after the cache: the front end's frozen models off
                                                         # the device (ComfyUI: unload its loaded models)
    gradient_checkpointing: Optional[bool] = None     # None: on with CUDA
    init_from: Optional[str] = None
    resume: bool = True
    preview_count: int = 4              # previews every config.preview_every steps (0 = none)
    preview_steps: int = 20
    preview_cfg: float = 5.0
    device: Optional[torch.device] = None

    def __post_init__(self):
        if self.text_length not in TEXT_LENGTHS:
            raise ValueError(f"text_length is one of {TEXT_LENGTHS}, not {self.text_length!r}")
        self.device = torch.device(self.device or "cpu")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def frozen_ella(connector, device: torch.device):
    """A frozen copy of `connector` on `device` in its own dtype: training never moves or changes the caller's."""
    copy = ELLA(connector.config)
    copy.load_state_dict({k: v.detach().clone() for k, v in connector.state_dict().items()})
    return copy.to(device=device, dtype=next(connector.parameters()).dtype).requires_grad_(False).eval()


def build_cache(job: TrainingJob, progress: Optional[Callable[[int, int], None]] = None):
    """The feature cache of the job's dataset (rank 0's part of run_job). Returns (CacheReport, item names)."""
    names = {"t5": job.t5_name or getattr(job.t5, "name", "") or None, "vae": job.vae_name or None,
             "condition": job.clip_vision_name or None}
    encoders = comfy_encoders(modality=job.modality, vae=job.vae, base_model=job.base_model, t5=job.t5,
                              resolution=job.resolution, text_length=job.text_length, clip_vision=job.clip_vision,
                              face_analyzer=job.face_analyzer, names={k: v for k, v in names.items() if v},
                              buckets=job.buckets, reference_views=job.reference_views)
    cache_root = job.cache_root or os.path.join(job.dataset, ".emma_cache")
    return prepare_cache(job.dataset, cache_root, encoders, progress=progress)


def _release_encoders(job: TrainingJob) -> None:
    for name in ("t5", "clip_vision", "face_analyzer"):
        encoder = getattr(job, name)
        if encoder is not None and callable(getattr(encoder, "release", None)):
            encoder.release()
        setattr(job, name, None)


def run_job(job: TrainingJob, *, cache_progress: Optional[Callable[[int, int], None]] = None,
            on_cache: Optional[Callable] = None, on_step: Optional[Callable] = None,
            should_stop: Optional[Callable] = None,
            on_preview: Optional[Callable[[int, object], None]] = None) -> EMMATrainOutput:
    """Train the job's module. Under torch.distributed every process calls it: rank 0 builds the cache (the
    others wait), every process trains its share, rank 0 writes. on_cache(report) sees rank 0's cache report
    (default: logged); on_preview(step, PIL grid) each preview; on_step / should_stop as loop.train."""
    rank, world = _rank_world()
    if job.t5 is None and rank == 0:
        raise ValueError("the training job has no T5 text encoder to build the feature cache with")
    payload = [None]
    if rank == 0:
        report, names = build_cache(job, cache_progress)
        (on_cache or (lambda r: log.info("%s", r.text())))(report)
        payload = [(str(report.folder), names)]
    _release_encoders(job)  # the loop reads only the cache
    if job.release_models is not None:
        job.release_models()
    if world > 1:
        dist.broadcast_object_list(payload, src=0)
    cache_folder, names = payload[0]

    base = job.load_base() if job.load_base is not None else job.base_model
    ella = frozen_ella(job.ella, job.device)
    preview = None
    if job.config.preview_every and rank == 0:
        preview = PreviewSetup(decode=lambda latents: job.vae.decode(base.process_latent_out(latents)),
                               dataset_dir=str(job.dataset), count=job.preview_count, steps=job.preview_steps,
                               cfg=job.preview_cfg, on_image=on_preview)
    return train_emma_module(cache_folder, names, modality=job.modality, ella=ella,
                             denoiser=comfy_epsilon_denoiser(base), out_path=job.out_path, run_dir=Path(job.run_dir),
                             config=job.config, device=job.device, ella_sha256=job.ella_sha256,
                             val_fraction=job.val_fraction, cond_dropout=job.cond_dropout,
                             text_dropout=job.text_dropout, noise_offset=job.noise_offset,
                             min_snr_gamma=job.min_snr_gamma,
                             gradient_checkpointing=job.gradient_checkpointing, checkpoint_unet=base,
                             init_from=job.init_from,
                             resume=job.resume, on_step=on_step, should_stop=should_stop, rank=rank,
                             preview=preview)
