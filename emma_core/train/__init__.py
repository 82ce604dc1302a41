"""EMMA's trainer: dataset folder -> feature cache -> training loop -> module file. No ComfyUI imports.

    dataset.scan_dataset(folder)                      the hand-made format (images + .txt, optional masks)
    cache.build_cache(items, root, CacheEncoders)     T5 / VAE / condition features as .safetensors shards
    cache.CachedDataset(folder)                       what the trainer reads
    objective.EMMATask(module, ella, denoiser, ...)   SD1.5 DDPM eps loss through frozen ELLA + UNet
    loop.train(task, train_set, TrainConfig, run_dir) the generic loop (AdamW, warm-up, AMP, DDP, resume)
    emma.train_emma(...)                              all of the above for one EMMA module (both front ends)
"""
from .cache import CacheEncoders, CachedDataset, Subset, build_cache, split_validation
from .checkpoint import load_latest, save_checkpoint
from .curve import render_loss_curve
from .dataset import DatasetItem, DatasetScan, scan_dataset
from .loop import TrainConfig, TrainResult, evaluate, train
from .objective import EMMATask, collate, comfy_epsilon_denoiser
from .schedule import DDPMSchedule, scaled_linear_alphas_cumprod, warmup_factor

__all__ = ["CacheEncoders", "CachedDataset", "Subset", "build_cache", "split_validation",
           "load_latest", "save_checkpoint", "render_loss_curve", "DatasetItem", "DatasetScan", "scan_dataset",
           "TrainConfig", "TrainResult", "evaluate", "train", "EMMATask", "collate", "comfy_epsilon_denoiser",
           "DDPMSchedule", "scaled_linear_alphas_cumprod", "warmup_factor"]
