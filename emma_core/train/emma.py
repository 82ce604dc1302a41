"""One EMMA module from a built feature cache (job.py puts the front ends' loaded models together around it).

    report = prepare_cache(dataset_dir, cache_root, encoders)          # rank 0 only under torchrun
    out = train_emma_module(report.folder, names, modality=..., ella=..., denoiser=..., out_path=..., ...)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..atomic import write_atomic
from ..emma_module import EMMAConfig, EMMAModule, load_module, save_module
from .cache import CacheEncoders, CacheReport, CachedDataset, Subset, build_cache, split_validation
from .dataset import scan_dataset
from .loop import TrainConfig, TrainResult, train
from .objective import EMMATask
from .preview import PreviewSetup, preview_grid, preview_items

log = logging.getLogger(__name__)


def prepare_cache(dataset_dir, cache_root, encoders: CacheEncoders, progress=None, shard_size: int = 64
                  ) -> tuple[CacheReport, list[str]]:
    """Scan the folder and encode what the cache lacks. Returns the report and the usable item names."""
    scan = scan_dataset(dataset_dir)
    report = build_cache(scan.items, cache_root, encoders, shard_size=shard_size, progress=progress,
                         scan_skipped=scan.skipped)
    return report, [i.name for i in scan.items]


@dataclass
class EMMATrainOutput:
    module_path: Optional[Path]
    result: TrainResult
    module: EMMAModule
    train_count: int
    val_count: int


def train_emma_module(cache_folder, names, *, modality: str, ella, denoiser, out_path, run_dir,
                      config: TrainConfig, device=None, ella_sha256: str = "", val_fraction: float = 0.1,
                      cond_dropout: float = 0.1, text_dropout: float = 0.1, noise_offset: float = 0.0,
                      min_snr_gamma: float = 0.0,
                      gradient_checkpointing: Optional[bool] = None, checkpoint_unet=None,
                      init_from: Optional[str] = None,
                      resume: bool = True, save_dtype: torch.dtype = torch.float16,
                      on_step: Optional[Callable] = None, should_stop: Optional[Callable] = None,
                      rank: int = 0, preview: Optional[PreviewSetup] = None) -> EMMATrainOutput:
    """Train an EMMA module on a built cache; rank 0 writes `out_path` atomically (the best validated
    weights when validation ran, else the last). With `preview` and config.preview_every, rank 0 writes a
    grid of sample pictures to <run_dir>/previews/step-NNNNNN.png every that many steps."""
    device = torch.device(device or "cpu")
    data = CachedDataset(cache_folder, names)
    if len(data) == 0:
        raise ValueError(f"the feature cache {cache_folder} has none of the dataset's images")
    first = data.sample(0)["features"]
    dims = {k: tuple(v.shape) for k, v in first.items() if k != "mask"}
    module_config = EMMAConfig(modality=modality, feature_dims=dims, ella=ella.config)
    if data.feature_kind() and data.feature_kind() != module_config.feature_kind:
        raise ValueError(f"the cache holds {data.feature_kind()!r} features; a {modality} module needs "
                         f"{module_config.feature_kind!r}")
    torch.manual_seed(config.seed)  # the same initial weights on every process
    # The cache's text length is the one the module learns under: the file records it (Assemble warns on another).
    module = EMMAModule(module_config, ella_sha256=ella_sha256, feature_encoder=data.feature_encoder(),
                        text_length=str(data.fingerprint.get("text_length", "")))
    if init_from:  # e.g. the paper's portrait model, fine-tuned from the object model
        start = load_module(init_from)
        if start.config.feature_kind != module_config.feature_kind or start.config.feature_dims != module_config.feature_dims:
            raise ValueError(f"{init_from} takes {start.config.feature_kind} features {start.config.feature_dims}; "
                             f"this dataset gives {module_config.feature_kind} {module_config.feature_dims}")
        module.load_state_dict(start.state_dict())
    module = module.to(device).float().requires_grad_(True).train()
    if gradient_checkpointing is None:  # per layer of the UNet `checkpoint_unet` (checkpointing.py); pays on a GPU
        gradient_checkpointing = device.type == "cuda"
    task = EMMATask(module, ella, denoiser, empty_text=data.empty_text.to(device), cond_dropout=cond_dropout,
                    text_dropout=text_dropout, noise_offset=noise_offset, min_snr_gamma=min_snr_gamma,
                    gradient_checkpointing=gradient_checkpointing, checkpoint_unet=checkpoint_unet)
    train_idx, val_idx = split_validation(len(data), val_fraction, config.seed)
    if not train_idx:
        raise ValueError("no training images left after the validation split")
    run_dir = Path(run_dir)
    best_path = run_dir / "best.safetensors"

    def on_best(trained, step, val):
        trained.training_steps = step
        save_module(trained, str(best_path), dtype=save_dtype)

    on_preview = None
    if preview is not None and rank == 0:
        items = preview_items(data, val_idx or train_idx, preview, seed=config.seed)
        latent_shape = tuple(data.sample(0)["latents"].shape)

        def on_preview(step):
            grid = preview_grid(task, items, preview.decode, latent_shape, preview.steps, preview.cfg)
            path = run_dir / "previews" / f"step-{step:06d}.png"
            write_atomic(path, lambda handle: grid.save(handle, format="PNG"))
            if preview.on_image is not None:
                preview.on_image(step, grid)

    result = train(task, Subset(data, train_idx), config, run_dir, val_set=Subset(data, val_idx) if val_idx else None,
                   resume=resume, on_step=on_step, on_best=on_best, should_stop=should_stop, on_preview=on_preview)
    module.training_steps = result.step
    out = None
    if rank == 0:
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if result.best_step is not None and best_path.is_file():
            best = load_module(str(best_path))
            module.load_state_dict({k: v.to(device) for k, v in best.state_dict().items()})
            module.training_steps = result.best_step
        save_module(module, str(out), dtype=save_dtype)
    return EMMATrainOutput(out, result, module, len(train_idx), len(val_idx))
