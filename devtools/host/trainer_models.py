"""The frozen models of an EMMA training job, loaded from their files with ComfyUI's own loaders: what
scripts/train_emma.py and the world's build (devtools/world/build.py) hand to emma_core.train.job, so the two
load the same way and map onto the same job builder; scripts/train_umm.py loads its checkpoint here too.

    models = load_trainer_models(checkpoint, ella, t5, comfy_dir=..., device=device)   # after import_comfy
    job = TrainingJob(..., vae=models.vae, base_model=models.base_model, load_base=models.load_base,
                      ella=models.ella, t5=models.t5, ...)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class TrainerModels:
    patcher: object                       # ComfyUI's ModelPatcher of the checkpoint's UNet
    vae: object                           # ComfyUI's VAE
    ella: Optional[torch.nn.Module] = None  # the connector (the job trains against a frozen copy)
    t5: Optional[object] = None           # emma_core.t5.T5TextEncoder, None where it was not asked for (ranks > 0)
    clip: Optional[object] = None         # the checkpoint's CLIP text encoder, where asked for (UMM)

    @property
    def base_model(self):
        return self.patcher.model

    @staticmethod
    def release() -> None:
        """Once the feature cache is built: ComfyUI's loaded models (VAE, CLIP vision) leave the device."""
        import comfy.model_management as mm

        mm.unload_all_models()
        mm.soft_empty_cache()

    def load_base(self):
        """The UNet on the compute device, whole and frozen (the job calls it once the cache is built)."""
        import comfy.model_management as mm

        mm.load_models_gpu([self.patcher], force_full_load=True)
        return self.patcher.model.requires_grad_(False).eval()


def load_checkpoint(checkpoint: str | os.PathLike, *, clip: bool = False) -> TrainerModels:
    """The checkpoint's UNet and VAE (and CLIP text encoder) through ComfyUI's own loader; ComfyUI must already be
    imported."""
    import comfy.sd

    patcher, clip_model, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True,
                                                                        output_clip=clip, output_clipvision=False)
    return TrainerModels(patcher, vae, clip=clip_model if clip else None)


def load_trainer_models(checkpoint: str | os.PathLike, ella: str | os.PathLike,
                        t5: Optional[str | os.PathLike], *, comfy_dir: str | os.PathLike,
                        device: torch.device) -> TrainerModels:
    """ComfyUI must already be imported (devtools.host.comfy_import). fp16 on CUDA, fp32 on the CPU; `t5` None
    skips the text encoder (only the process that builds the feature cache needs it)."""
    from emma_core.ella_file import load_ella
    from emma_core.t5 import T5TextEncoder, load_t5_encoder, load_tokenizer

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    models = load_checkpoint(checkpoint)
    models.ella = load_ella(str(ella), dtype=dtype)
    if t5 is not None:
        tokenizer = load_tokenizer(os.path.join(str(comfy_dir), "comfy", "text_encoders", "t5_tokenizer"))
        models.t5 = T5TextEncoder(load_t5_encoder(str(t5), dtype=dtype).to(device), tokenizer)
    return models
