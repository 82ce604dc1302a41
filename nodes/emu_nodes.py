"""Emu quality-tuning nodes: curate a folder (filters + contact sheet + review list), then tune a LoRA."""
from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..emma_core.emu import run
from ..emma_core.emu.curate import REVIEW_NAME, CurationConfig, aesthetic_scorer, clip_scorer, contact_sheet
from ..emma_core.emu.quality_tune import DEFAULT_LR, EmuRecipe
from ..emma_core.stamps import files_stamp
from ..emma_core.train.curve import image_tensor, render_loss_curve
from .trainable import load_for_training, training_clone
from .errors import check_numbers, node_error, reported_by

DEFAULT_LORA = "emu-quality-tuned"


def _folder(node, path: str) -> Path:
    if not path.strip().strip('"'):  # Path("") is ".", ComfyUI's own folder: never read that by accident
        raise node_error(node, "folder is empty: give the full path of a folder of images (with same-name .txt "
                               "captions)")
    folder = Path(os.path.expanduser(path.strip().strip('"')))
    if not folder.is_dir():
        raise node_error(node, f"folder {str(folder)!r} does not exist (give the full path of a folder of images)")
    return folder


class _ReadsDatasetFolder(io.ComfyNode):
    """A node that reads a folder of images and its review list: editing any of those files re-runs it instead
    of ComfyUI's cached result."""

    @classmethod
    def fingerprint_inputs(cls, folder, review_list="", **kwargs):
        path = Path(os.path.expanduser(folder.strip().strip('"')))
        if not path.is_dir():
            return folder
        return files_stamp(sorted(path.iterdir()) + [run.review_path(path, review_list)])


class EmuCurateFolder(_ReadsDatasetFolder):
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
    def execute(cls, folder, min_side, min_aspect, max_aspect, remove_duplicates, duplicate_distance,
                review_list="", clip_vision=None, clip=None, clip_min=0.0, aesthetic_predictor="",
                aesthetic_min=5.0, sheet_columns=8) -> io.NodeOutput:
        check_numbers(cls, min_aspect=min_aspect, max_aspect=max_aspect, clip_min=clip_min, aesthetic_min=aesthetic_min)
        path = _folder(cls, folder)
        config = CurationConfig(min_side=min_side, min_aspect=min_aspect, max_aspect=max_aspect,
                                dedupe=remove_duplicates, dedupe_distance=duplicate_distance,
                                clip_min=clip_min if clip_min > 0 else None,
                                aesthetic_min=aesthetic_min if aesthetic_predictor.strip() else None)
        clip_fn = aesthetic_fn = None
        if config.clip_min is not None:
            if clip_vision is None or clip is None:
                raise node_error(cls, "clip_min > 0 needs both clip_vision and clip connected (or set it to 0)")
            clip_fn = clip_scorer(clip_vision, clip)
        if config.aesthetic_min is not None:
            if clip_vision is None:
                raise node_error(cls, "the aesthetic filter needs clip_vision (CLIP ViT-L/14) connected")
            predictor = Path(os.path.expanduser(aesthetic_predictor.strip()))
            if not predictor.is_file():
                raise node_error(cls, f"aesthetic predictor {str(predictor)!r} does not exist")
            with reported_by(cls, ValueError):
                aesthetic_fn = aesthetic_scorer(clip_vision, comfy.utils.load_torch_file(str(predictor),
                                                                                         safe_load=True))
        review = run.review_path(path, review_list)
        bar = comfy.utils.ProgressBar(1)

        def progress(done, total):
            mm.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        with reported_by(cls, ValueError):
            result, report = run.curate(path, config, review, clip_fn, aesthetic_fn, progress=progress)
        pages = contact_sheet(result, columns=sheet_columns)
        return io.NodeOutput(report, torch.cat([image_tensor(p) for p in pages]), str(review), ui={"text": [report]})


class EmuQualityTune(_ReadsDatasetFolder):
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
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-6,
                               tooltip=f"0 = the mode's default (lora {DEFAULT_LR['lora']:g}, full "
                                       f"{DEFAULT_LR['full']:g}); any other value is used as given"),
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
    def execute(cls, model, clip, vae, folder, review_list, lora_name, mode, max_steps, learning_rate, rank,
                patience, validate_every, effective_batch, micro_batch, noise_offset, resolution,
                seed) -> io.NodeOutput:
        check_numbers(cls, learning_rate=learning_rate, noise_offset=noise_offset)
        path = _folder(cls, folder)
        name = lora_name.strip() or DEFAULT_LORA
        if not name.endswith(".safetensors"):
            name += ".safetensors"
        if os.sep in name or "/" in name:
            raise node_error(cls, "lora_name is a file name, not a path")
        # learning_rate 0 is "the mode's default": one widget default cannot suit both modes
        recipe = EmuRecipe(mode=mode, rank=rank, lr=learning_rate or None, max_steps=max_steps, patience=patience,
                           val_every=validate_every, effective_batch=effective_batch, micro_batch=micro_batch,
                           noise_offset=noise_offset, seed=seed,
                           checkpoint_every=validate_every * max(1, 500 // validate_every))
        output = Path(folder_paths.get_output_directory()) / "emu"
        bar = comfy.utils.ProgressBar(recipe.max_steps)
        model = training_clone(model)
        with torch.inference_mode(False), reported_by(cls, ValueError):
            done = run.tune(model, clip, vae, path, run.existing_review(path, review_list),
                            Path(folder_paths.get_folder_paths("loras")[0]) / name, recipe, resolution,
                            output / "cache", runs_root=output / "runs",
                            load_model=lambda: load_for_training(model),
                            should_stop=mm.throw_exception_if_processing_interrupted,
                            on_step=lambda step, total, record: bar.update_absolute(step, total))
        curve = done.result.curve or render_loss_curve(done.result.records)
        return io.NodeOutput(name, image_tensor(curve), done.report())


NODES = [EmuCurateFolder, EmuQualityTune]
