"""Emu quality-tuning nodes: curate a folder (filters + contact sheet + review list), then tune a LoRA."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..emma_core.emu.curate import (REVIEW_NAME, CurationConfig, aesthetic_head, contact_sheet, curate_folder,
                                    write_review_list)
from ..emma_core.emu.quality_tune import EmuRecipe, prepare_dataset, quality_tune, save_lora
from ..emma_core.train.curve import image_tensor, render_loss_curve
from ..emma_core.train.objective import comfy_epsilon_denoiser
from .errors import node_error

DEFAULT_LORA = "emu-quality-tuned"


def _folder(path: str, node: str) -> Path:
    folder = Path(os.path.expanduser(path.strip().strip('"')))
    if not folder.is_dir():
        raise node_error(node, f"folder {str(folder)!r} does not exist (give the full path of a folder of images)")
    return folder


def _review_path(folder: Path, review_list: str) -> Path:
    return Path(os.path.expanduser(review_list.strip())) if review_list.strip() else folder / REVIEW_NAME


def _folder_state(folder: Path, *files: Path) -> str:
    """Changes when any file of the folder (or the review list) changes: re-run instead of ComfyUI's cache."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()) + [f for f in files if f.is_file()]:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _dataset_fingerprint(folder: str, review_list: str, node: str) -> str:
    """fingerprint_inputs of the nodes that read a dataset folder and its review list."""
    try:
        f = _folder(folder, node)
    except ValueError:
        return folder
    return _folder_state(f, _review_path(f, review_list or ""))


def _pil_batch(pages) -> torch.Tensor:
    return torch.cat([image_tensor(p) for p in pages])


# ---- scorers from the user's models --------------------------------------------------------------------
def _clip_image_embeds(clip_vision, image) -> torch.Tensor:
    import numpy as np

    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    out = clip_vision.encode_image(tensor)
    embeds = out["image_embeds"] if "image_embeds" in out else out.image_embeds
    return torch.nn.functional.normalize(embeds.float(), dim=-1)


def clip_scorer(clip_vision, clip):
    """cos(image embedding, caption embedding); needs a CLIP text encoder whose projection matches the vision
    model (ViT-L/14 vision with the full clip_l text encoder from Load CLIP)."""
    def score(image, caption: str) -> float:
        image_embeds = _clip_image_embeds(clip_vision, image)
        _cond, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
        if pooled.shape[-1] != image_embeds.shape[-1]:
            raise node_error("Emu Curate Folder", f"the CLIP text encoder gives {pooled.shape[-1]}-d embeddings "
                             f"but the CLIP vision model {image_embeds.shape[-1]}-d: use a matching pair")
        text = torch.nn.functional.normalize(pooled.float().to(image_embeds.device), dim=-1)
        return float((image_embeds * text).sum())
    return score


def aesthetic_scorer(clip_vision, predictor_path: str):
    head = aesthetic_head(comfy.utils.load_torch_file(predictor_path, safe_load=True))

    def score(image) -> float:
        embeds = _clip_image_embeds(clip_vision, image).cpu()
        if embeds.shape[-1] != head[0].in_features:
            raise node_error("Emu Curate Folder", f"the aesthetic predictor expects {head[0].in_features}-d CLIP "
                             f"embeddings; the CLIP vision model gives {embeds.shape[-1]} (use ViT-L/14)")
        with torch.no_grad():
            return float(head(embeds)[0, 0])
    return score


class EmuCurateFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EmuCurateFolder",
            display_name="Emu Curate Folder",
            category="EMMA/emu",
            description="Emu-style curation: automatic filters (size, aspect ratio, near-duplicates, optional "
                        "CLIP score and aesthetic score) with a report of every removed file and why, a contact "
                        "sheet to review, and a review list (CSV: keep/reject per file) that the tuning honours. "
                        "Edit the list by hand; re-running keeps your changes.",
            inputs=[
                io.String.Input("folder", default="", tooltip="folder of images (with same-name .txt captions)"),
                io.Int.Input("min_side", default=512, min=1, max=16384, tooltip="shorter side in pixels"),
                io.Float.Input("min_aspect", default=0.5, min=0.01, max=100.0, step=0.01, tooltip="width / height"),
                io.Float.Input("max_aspect", default=2.0, min=0.01, max=100.0, step=0.01),
                io.Boolean.Input("remove_duplicates", default=True),
                io.Int.Input("duplicate_distance", default=6, min=0, max=32,
                             tooltip="perceptual-hash bits (of 64) within which two images are near-duplicates"),
                io.String.Input("review_list", default="", optional=True,
                                tooltip=f"where to write the review list; empty = <folder>/{REVIEW_NAME}"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="for the CLIP-score and aesthetic filters (ViT-L/14 for the LAION "
                                            "aesthetic predictor)"),
                io.Clip.Input("clip", optional=True, tooltip="text encoder for the CLIP score (matching clip_vision)"),
                io.Float.Input("clip_min", default=0.0, min=0.0, max=1.0, step=0.005, optional=True,
                               tooltip="minimum cosine similarity of image and caption; 0 = off"),
                io.String.Input("aesthetic_predictor", default="", optional=True,
                                tooltip="path of an aesthetic predictor head (.safetensors/.pth, LAION "
                                        "improved-aesthetic-predictor layout); empty = off"),
                io.Float.Input("aesthetic_min", default=5.0, min=0.0, max=10.0, step=0.05, optional=True),
                io.Int.Input("sheet_columns", default=8, min=1, max=32, optional=True),
            ],
            outputs=[io.String.Output(display_name="report"), io.Image.Output(display_name="contact_sheet"),
                     io.String.Output(display_name="review_list")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, folder, review_list="", **kwargs):
        return _dataset_fingerprint(folder, review_list, "Emu Curate Folder")

    @classmethod
    def execute(cls, folder, min_side, min_aspect, max_aspect, remove_duplicates, duplicate_distance,
                review_list="", clip_vision=None, clip=None, clip_min=0.0, aesthetic_predictor="",
                aesthetic_min=5.0, sheet_columns=8) -> io.NodeOutput:
        node = "Emu Curate Folder"
        path = _folder(folder, node)
        config = CurationConfig(min_side=min_side, min_aspect=min_aspect, max_aspect=max_aspect,
                                dedupe=remove_duplicates, dedupe_distance=duplicate_distance,
                                clip_min=clip_min if clip_min > 0 else None,
                                aesthetic_min=aesthetic_min if aesthetic_predictor.strip() else None)
        clip_fn = aesthetic_fn = None
        if config.clip_min is not None:
            if clip_vision is None or clip is None:
                raise node_error(node, "clip_min > 0 needs both clip_vision and clip connected (or set it to 0)")
            clip_fn = clip_scorer(clip_vision, clip)
        if config.aesthetic_min is not None:
            if clip_vision is None:
                raise node_error(node, "the aesthetic filter needs clip_vision (CLIP ViT-L/14) connected")
            predictor = Path(os.path.expanduser(aesthetic_predictor.strip()))
            if not predictor.is_file():
                raise node_error(node, f"aesthetic predictor {str(predictor)!r} does not exist")
            aesthetic_fn = aesthetic_scorer(clip_vision, str(predictor))
        bar = comfy.utils.ProgressBar(1)

        def progress(done, total):
            mm.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        try:
            result = curate_folder(path, config, clip_fn, aesthetic_fn, progress=progress)
        except (FileNotFoundError, ValueError) as error:
            raise node_error(node, str(error)) from error
        review = _review_path(path, review_list or "")
        kept_human = write_review_list(review, result)
        report = result.report() + f"\nreview list: {review}" + (
            f" ({kept_human} decisions you changed were kept)" if kept_human else "")
        pages = contact_sheet(result, columns=sheet_columns)
        return io.NodeOutput(report, _pil_batch(pages), str(review), ui={"text": [report]})


class EmuQualityTune(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EmuQualityTune",
            display_name="Emu Quality-Tune",
            category="EMMA/emu",
            description="Emu quality-tuning of an SD1.5 UNet on a curated folder (images + .txt captions, the "
                        "files marked keep in the review list): LoRA (default) or full fine-tuning, noise offset "
                        "0.1, effective batch 64 by accumulation, at most 15K steps, early stopping on a held-out "
                        "validation loss. Saves the best step's weights to models/loras for the stock LoraLoader. "
                        "Re-running with the same settings resumes the run.",
            inputs=[
                io.Model.Input("model"), io.Clip.Input("clip"), io.Vae.Input("vae"),
                io.String.Input("folder", default=""),
                io.String.Input("review_list", default="",
                                tooltip=f"empty = <folder>/{REVIEW_NAME} if it exists, else every captioned image"),
                io.String.Input("lora_name", default=DEFAULT_LORA, tooltip="file name in models/loras"),
                io.Combo.Input("mode", options=["lora", "full"], default="lora",
                               tooltip="full fine-tuning saves the weight differences (a large 'diff' LoRA)"),
                io.Int.Input("max_steps", default=15000, min=1, max=1000000),
                io.Float.Input("learning_rate", default=1e-4, min=1e-8, max=1.0, step=1e-6),
                io.Int.Input("rank", default=16, min=1, max=512),
                io.Int.Input("patience", default=5, min=0, max=1000,
                             tooltip="validations without improvement before stopping; 0 = never stop early"),
                io.Int.Input("validate_every", default=100, min=1, max=100000),
                io.Int.Input("effective_batch", default=64, min=1, max=4096),
                io.Int.Input("micro_batch", default=4, min=1, max=256, tooltip="per forward pass (memory)"),
                io.Float.Input("noise_offset", default=0.1, min=0.0, max=1.0, step=0.01),
                io.Int.Input("resolution", default=512, min=32, max=2048, step=8),
                io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1),
            ],
            outputs=[io.String.Output(display_name="lora_name"), io.Image.Output(display_name="loss_curve"),
                     io.String.Output(display_name="report")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, folder, review_list="", **kwargs):
        return _dataset_fingerprint(folder, review_list, "Emu Quality-Tune")

    @classmethod
    def execute(cls, model, clip, vae, folder, review_list, lora_name, mode, max_steps, learning_rate, rank,
                patience, validate_every, effective_batch, micro_batch, noise_offset, resolution, seed) -> io.NodeOutput:
        node = "Emu Quality-Tune"
        path = _folder(folder, node)
        review = _review_path(path, review_list)
        if review_list.strip() and not review.is_file():
            raise node_error(node, f"review list {str(review)!r} does not exist (run Emu Curate Folder first)")
        name = lora_name.strip() or DEFAULT_LORA
        if not name.endswith(".safetensors"):
            name += ".safetensors"
        if os.sep in name or "/" in name:
            raise node_error(node, "lora_name is a file name, not a path")
        recipe = EmuRecipe(mode=mode, rank=rank, lr=learning_rate, max_steps=max_steps, patience=patience,
                           val_every=validate_every, effective_batch=effective_batch, micro_batch=micro_batch,
                           noise_offset=noise_offset, seed=seed,
                           checkpoint_every=validate_every * max(1, 500 // validate_every))
        with torch.inference_mode(False):
            return io.NodeOutput(*tune(model, clip, vae, path, review if review.is_file() else None, name, recipe,
                                       resolution, node))


def _weights_fingerprint(module) -> str:
    h = hashlib.sha256()
    sd = module.state_dict()
    for k in list(sd)[:3] + list(sd)[-3:]:
        t = sd[k]
        h.update(k.encode())
        h.update(t.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tune(model, clip, vae, folder: Path, review, lora_file: str, recipe: EmuRecipe, resolution: int, node: str,
         output_root=None):
    """The node's work (also used by scripts/emu_tune.py): returns (lora file name, curve IMAGE, report)."""
    output_root = Path(output_root or folder_paths.get_output_directory()) / "emu"

    def encode_text(caption: str) -> torch.Tensor:
        with torch.no_grad():
            return clip.encode_from_tokens(clip.tokenize(caption))[0].float().cpu().clone()

    def encode_image(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            latents = vae.encode(image[:, :, :, :3])
            return model.model.process_latent_in(latents.float()).cpu().clone()

    fingerprint = {"clip": _weights_fingerprint(clip.cond_stage_model), "vae": _weights_fingerprint(vae.first_stage_model)}
    bar = comfy.utils.ProgressBar(recipe.max_steps)
    try:
        data = prepare_dataset(folder, review, encode_text, encode_image, fingerprint, output_root / "cache",
                               resolution=resolution, val_fraction=recipe.val_fraction, seed=recipe.seed,
                               progress=lambda d, t: mm.throw_exception_if_processing_interrupted())
    except (FileNotFoundError, ValueError) as error:
        raise node_error(node, str(error)) from error
    run_key = hashlib.sha256((recipe.fingerprint() + str(resolution) + _weights_fingerprint(model.model.diffusion_model)
                              + "|".join(data.names)).encode()).hexdigest()[:10]
    run_dir = output_root / "runs" / f"{Path(lora_file).stem}-{run_key}"
    mm.load_models_gpu([model])
    device = model.load_device
    unet = model.model.diffusion_model
    result = quality_tune(unet, comfy_epsilon_denoiser(model.model), data.train, data.val, recipe, run_dir,
                          empty_text=data.empty_text, on_step=lambda s, n, r: bar.update_absolute(s, n),
                          should_stop=mm.throw_exception_if_processing_interrupted, device=device,
                          extra_metadata={"emu_images": len(data.names)})
    loras_dir = Path(folder_paths.get_folder_paths("loras")[0])
    save_lora(loras_dir / lora_file, result.lora, result.metadata)
    report = "\n".join([data.report, result.summary(), f"saved {loras_dir / lora_file}", f"run folder {run_dir}"])
    curve = result.curve or render_loss_curve(result.records)
    return lora_file, image_tensor(curve), report


NODES = [EmuCurateFolder, EmuQualityTune]
