"""Emu runs as both front ends start them (the Emu nodes and scripts/emu_tune.py): curate a folder and write
its review list; tune a LoRA on the images marked keep and save it.

The models are the user's ComfyUI objects, duck-typed (nothing here imports ComfyUI):
    model  ModelPatcher: .model (.diffusion_model, .process_latent_in(latents)) and .load_device
    clip   CLIP: .tokenize(text), .encode_from_tokens(tokens) -> (cond [1, 77 k, 768], ...), .cond_stage_model
    vae    VAE: .encode(IMAGE [1, H, W, 3]) -> latents, .first_stage_model
What needs ComfyUI's model management comes in as callables (load_model, should_stop).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..train.encoders import module_fingerprint
from ..train.objective import comfy_epsilon_denoiser
from .curate import REVIEW_NAME, CurationConfig, CurationResult, curate_folder, write_review_list
from .quality_tune import EmuData, EmuRecipe, TuneResult, prepare_dataset, quality_tune, save_lora

Progress = Callable[[int, int], None]


def review_path(folder: str | os.PathLike, given: str | os.PathLike | None = None) -> Path:
    """Where the review list of `folder` is: the path given, else <folder>/emu_review.csv."""
    given = str(given or "").strip()
    return Path(os.path.expanduser(given)) if given else Path(folder) / REVIEW_NAME


def existing_review(folder: str | os.PathLike, given: str | os.PathLike | None = None) -> Optional[Path]:
    """The review list a tuning honours: the one given (which must exist), else the folder's own if there is
    one, else None (every captioned image is used)."""
    path = review_path(folder, given)
    if str(given or "").strip() and not path.is_file():
        raise FileNotFoundError(f"review list {path} does not exist (run the curation first: it writes one)")
    return path if path.is_file() else None


def curate(folder: str | os.PathLike, config: CurationConfig, review: Path, clip_score=None, aesthetic_score=None,
           progress: Optional[Progress] = None) -> tuple[CurationResult, str]:
    """The filters, then the review list (a person's earlier decisions kept); returns (result, report)."""
    result = curate_folder(folder, config, clip_score, aesthetic_score, progress=progress)
    kept_human = write_review_list(review, result)
    report = result.report() + f"\nreview list: {review}" + (
        f" ({kept_human} decisions you changed were kept)" if kept_human else "")
    return result, report


@dataclass
class EmuRun:
    lora_path: Path
    run_dir: Path
    data: EmuData
    result: TuneResult

    def report(self) -> str:
        return "\n".join([self.data.report, self.result.summary(), f"saved {self.lora_path}",
                          f"run folder {self.run_dir}"])


def run_folder(runs_root: str | os.PathLike, lora_path: str | os.PathLike, recipe: EmuRecipe, resolution: int,
               unet: torch.nn.Module, names: list[str]) -> Path:
    """A run's own folder: the same LoRA name, recipe, resolution, UNet and images resume it; a change of any
    of them starts another run."""
    key = "|".join([recipe.fingerprint(), str(resolution), module_fingerprint(unet), *names])
    return Path(runs_root) / f"{Path(lora_path).stem}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def tune(model, clip, vae, folder: str | os.PathLike, review: Optional[Path], lora_path: str | os.PathLike,
         recipe: EmuRecipe, resolution: int, cache_dir: str | os.PathLike, *, run_dir=None, runs_root=None,
         load_model: Callable[[], None] = lambda: None, should_stop: Optional[Callable[[], None]] = None,
         on_encode: Optional[Progress] = None, on_step: Optional[Callable[[int, int, dict], None]] = None,
         extra_metadata: Optional[dict] = None) -> EmuRun:
    """Encode the images marked keep (cached), tune with `recipe` in `run_dir` (or a folder of `runs_root`
    named by run_folder), save the best step's LoRA at `lora_path`. should_stop raises to interrupt."""
    if (run_dir is None) == (runs_root is None):
        raise ValueError("give exactly one of run_dir and runs_root")

    def encode_text(caption: str) -> torch.Tensor:
        with torch.no_grad():
            return clip.encode_from_tokens(clip.tokenize(caption))[0].float().cpu().clone()

    def encode_image(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.model.process_latent_in(vae.encode(image[:, :, :, :3]).float()).cpu().clone()

    def encoded(done: int, total: int) -> None:
        if should_stop is not None:
            should_stop()
        if on_encode is not None:
            on_encode(done, total)

    fingerprint = {"clip": module_fingerprint(clip.cond_stage_model), "vae": module_fingerprint(vae.first_stage_model)}
    data = prepare_dataset(folder, review, encode_text, encode_image, fingerprint, cache_dir, resolution=resolution,
                           val_fraction=recipe.val_fraction, seed=recipe.seed, progress=encoded)
    unet = model.model.diffusion_model
    run_dir = Path(run_dir) if run_dir is not None else run_folder(runs_root, lora_path, recipe, resolution, unet,
                                                                   data.names)
    load_model()
    result = quality_tune(unet, comfy_epsilon_denoiser(model.model), data.train, data.val, recipe, run_dir,
                          empty_text=data.empty_text, on_step=on_step, should_stop=should_stop,
                          device=model.load_device,
                          extra_metadata={"emu_images": len(data.names), **(extra_metadata or {})})
    save_lora(lora_path, result.lora, result.metadata)
    return EmuRun(Path(lora_path), run_dir, data, result)
