"""Train an EMMA module inside ComfyUI: the user's MODEL + VAE + ELLA + T5 and a dataset folder."""
from __future__ import annotations

import logging
import os

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..emma_core.state_dict import sha256_file
from ..emma_core.train.curve import image_tensor, render_loss_curve
from ..emma_core.train.encoders import TEXT_LENGTHS
from ..emma_core.train.job import DEFAULT_EMA, DEFAULT_REFERENCE_VIEWS, TrainingJob, run_job
from ..emma_core.train.loop import TrainConfig
from .errors import check_numbers, node_error, reported_by
from .ella_nodes import ELLA_TYPE, T5_TYPE
from .emma_nodes import clip_vision_file
from .folders import face_analyzer, insightface_packs
from .trainable import trainable_model

log = logging.getLogger("ComfyUI-EMMA")


class TrainModule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMATrainModule",
            display_name="EMMA Train Module",
            category="EMMA/training",
            description="Trains an EMMA condition module (AGPR branch + feature adapter; UNet, VAE, T5 and ELLA "
                        "stay frozen) on a folder of images with same-name .txt captions (optional <name>_mask.png "
                        "for object modules). Writes models/emma/<module_name>.safetensors; logs, checkpoints and "
                        "the loss curve go to output/emma_training/<module_name>/. Re-running resumes.",
            inputs=[
                io.Model.Input("model"),
                io.Vae.Input("vae"),
                ELLA_TYPE.Input("ella"),
                T5_TYPE.Input("t5"),
                io.String.Input("dataset_path", default=""),
                io.Combo.Input("modality", options=["face", "object", "portrait", "style"], default="face"),
                io.String.Input("module_name", default="my_emma_module"),
                io.Int.Input("steps", default=2000, min=1, max=1_000_000),
                io.Int.Input("batch_size", default=4, min=1, max=256),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1e-2, step=1e-5),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64),
                io.Float.Input("validation_split", default=0.1, min=0.0, max=0.5, step=0.01),
                io.Int.Input("validate_every", default=200, min=0, max=100_000),
                io.Int.Input("early_stopping_patience", default=0, min=0, max=1000),
                io.Int.Input("checkpoint_every", default=500, min=0, max=100_000),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Boolean.Input("resume", default=True),
                io.Combo.Input("text_length", options=list(TEXT_LENGTHS), default=TEXT_LENGTHS[0]),
                io.ClipVision.Input("clip_vision", optional=True, tooltip="object / portrait / style modules"),
                io.Combo.Input("face_pack", options=insightface_packs(), optional=True,
                               tooltip="face modules: InsightFace pack in models/insightface/models"),
                io.Int.Input("preview_every", default=250, min=0, max=100_000, optional=True,
                             tooltip="sample pictures every N steps (held-out references, the same seeds each "
                                     "time), shown on this node and saved in the run folder's previews/; 0 = off"),
                io.Int.Input("gradient_accumulation", default=1, min=1, max=256, optional=True,
                             tooltip="micro-batches per step: batch_size x this is the batch the step learns from "
                                     "(a larger batch on a GPU that fits only batch_size)"),
                io.Combo.Input("precision", options=["auto", "fp16", "bf16", "fp32"], default="auto", optional=True,
                               tooltip="auto: fp16 on a GPU, fp32 on the CPU; bf16 on GPUs that have it"),
                io.Int.Input("warmup_steps", default=-1, min=-1, max=100_000, optional=True,
                             tooltip="learning-rate warm-up; -1 = 5 % of the steps"),
                io.Float.Input("text_dropout", default=0.1, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="share of steps without the caption (what the negative prompt gives)"),
                io.Float.Input("condition_dropout", default=0.1, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="share of steps without the reference (what sampling without the module gives)"),
                io.Float.Input("ema_decay", default=DEFAULT_EMA, min=0.0, max=0.99999, step=0.0001, optional=True,
                               tooltip="0 = the last weights (default); e.g. 0.999: the saved module is the moving "
                                       "average of the weights (it lags a short run: docs/training.md)"),
                io.Int.Input("reference_views", default=DEFAULT_REFERENCE_VIEWS, min=0, max=16, optional=True,
                             tooltip="object / portrait / style: augmented views (crop, flip, scale) of each "
                                     "reference, one read per step, so the module cannot copy the target picture"),
                io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=20.0, step=0.5, optional=True,
                               tooltip="min-SNR-gamma loss weighting (5 is common); 0 = off"),
                io.Boolean.Input("aspect_buckets", default=True, optional=True,
                                 tooltip="train each picture at its own aspect (buckets of about resolution^2); "
                                         "off = square centre crops"),
                io.Combo.Input("gradient_checkpointing", options=["auto", "on", "off"], default="auto",
                               optional=True, tooltip="recompute activations in the backward pass to save memory; "
                                                      "auto = on with a GPU"),
            ],
            outputs=[io.String.Output(display_name="module_name"), io.Image.Output(display_name="loss_curve"),
                     io.Image.Output(display_name="preview")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, vae, ella, t5, dataset_path, modality, module_name, steps, batch_size, learning_rate,
                resolution, validation_split, validate_every, early_stopping_patience, checkpoint_every, seed,
                resume, text_length, clip_vision=None, face_pack=None, preview_every=250, gradient_accumulation=1,
                precision="auto", warmup_steps=-1, text_dropout=0.1, condition_dropout=0.1, ema_decay=DEFAULT_EMA,
                reference_views=DEFAULT_REFERENCE_VIEWS, min_snr_gamma=0.0, aspect_buckets=True,
                gradient_checkpointing="auto") -> io.NodeOutput:
        check_numbers(cls, learning_rate=learning_rate, validation_split=validation_split, text_dropout=text_dropout,
                      condition_dropout=condition_dropout, ema_decay=ema_decay, min_snr_gamma=min_snr_gamma)
        stem = os.path.basename(module_name.strip()).removesuffix(".safetensors")
        if not stem:
            raise node_error(cls, "module_name is empty")
        dataset = os.path.expanduser(dataset_path.strip())
        if not os.path.isdir(dataset):
            raise node_error(cls, f"dataset folder {dataset!r} does not exist")
        device = mm.get_torch_device()
        bar, last = comfy.utils.ProgressBar(steps), {}

        def show(step, grid):
            last["grid"] = grid
            bar.update_absolute(step, steps, ("PNG", grid, 768))

        def cache_progress(n, total):
            bar.update_absolute(n, total)
            mm.throw_exception_if_processing_interrupted()

        with torch.inference_mode(False), torch.enable_grad(), reported_by(cls, ValueError):
            # The job holds the only reference to the face analyzer: it goes once the cache is built.
            job = TrainingJob(
                modality=modality, dataset=dataset, run_dir=os.path.join(folder_paths.get_output_directory(),
                                                                         "emma_training", stem),
                out_path=os.path.join(folder_paths.get_folder_paths("emma")[0], stem + ".safetensors"),
                config=TrainConfig(steps=steps, batch_size=batch_size, grad_accum=gradient_accumulation,
                                   lr=learning_rate, warmup_iters=warmup_steps, precision=precision,
                                   val_every=validate_every, early_stopping_patience=early_stopping_patience,
                                   checkpoint_every=checkpoint_every, seed=seed, preview_every=preview_every,
                                   ema_decay=ema_decay),
                vae=vae, base_model=model.model, load_base=lambda: trainable_model(model).model,
                ella=ella.connector, t5=t5, clip_vision=clip_vision,
                face_analyzer=face_analyzer(cls, "face_pack", face_pack or "antelopev2",
                                            "cpu" if device.type == "cpu" else "auto") if modality == "face" else None,
                resolution=resolution, text_length=text_length, t5_name=t5.name,
                clip_vision_name=clip_vision_file(cls), ella_sha256=_ella_sha256(ella),
                val_fraction=validation_split, cond_dropout=condition_dropout, text_dropout=text_dropout,
                min_snr_gamma=min_snr_gamma, buckets=aspect_buckets, reference_views=reference_views,
                gradient_checkpointing={"auto": None, "on": True, "off": False}[gradient_checkpointing],
                release_models=_release_models, resume=resume, device=device)
            out = run_job(job, cache_progress=cache_progress,
                          on_cache=lambda report: log.info("EMMA Train Module: %s", report.text()),
                          on_step=lambda step, total, record: bar.update_absolute(step, total),
                          should_stop=mm.throw_exception_if_processing_interrupted, on_preview=show)
        curve = out.result.curve or render_loss_curve(out.result.records)
        grid = last.get("grid")
        return io.NodeOutput(os.path.basename(out.module_path), image_tensor(curve),
                             image_tensor(grid) if grid is not None else torch.zeros(1, 64, 64, 3))


def _release_models() -> None:
    """Once the cache is built: ComfyUI's loaded models (the VAE, CLIP vision, the T5 handle's model) leave the
    device; the UNet comes back through trainable_model for training."""
    mm.unload_all_models()
    mm.soft_empty_cache()


def _ella_sha256(ella) -> str:
    """sha256 of the ELLA file the handle was loaded from, when it can be found (module provenance)."""
    try:
        path = folder_paths.get_full_path("ella", ella.name)
        if not path:
            return ""
        return sha256_file(path)
    except OSError:
        return ""


NODES = [TrainModule]
