"""Train a UMM-Diffusion projector inside ComfyUI: the user's MODEL + VAE + CLIP + CLIP Vision and a dataset folder."""
from __future__ import annotations

import logging
import os

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..emma_core.train.curve import image_tensor, render_loss_curve
from ..emma_core.train.loop import TrainConfig
from ..emma_core.train.umm_job import SubjectWordError, UMMTrainingJob, run_umm_job
from .emma_nodes import clip_vision_file
from .errors import check_numbers, node_error, reported_by
from .trainable import trainable_model

log = logging.getLogger("ComfyUI-EMMA")


class TrainProjector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UMMTrainProjector",
            display_name="UMM Train Projector",
            category="EMMA/UMM",
            description="Trains a UMM-Diffusion projector (CLIP image embedding -> a pseudo-word in CLIP's text "
                        "space; UNet, VAE, CLIP and CLIP Vision stay frozen) on a folder of images with same-name "
                        ".txt captions that contain the subject word (optional <name>_ref.<image>: the subject "
                        "picture, else the image itself). Writes models/umm/<projector_name>.safetensors for Load "
                        "UMM Projector; logs, checkpoints and the loss curve go to "
                        "output/umm_training/<projector_name>/. Re-running resumes.",
            inputs=[
                io.Model.Input("model"),
                io.Vae.Input("vae"),
                io.Clip.Input("clip"),
                io.ClipVision.Input("clip_vision"),
                io.String.Input("dataset_path", default=""),
                io.String.Input("subject_word", default="dog",
                                tooltip="the word of the captions that names the subject (the image replaces it)"),
                io.String.Input("projector_name", default="my_umm_projector"),
                io.Int.Input("steps", default=2000, min=1, max=1_000_000),
                io.Int.Input("batch_size", default=4, min=1, max=256),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1e-2, step=1e-5),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Boolean.Input("resume", default=True),
                io.Float.Input("validation_split", default=0.1, min=0.0, max=0.5, step=0.01, optional=True),
                io.Int.Input("validate_every", default=200, min=0, max=100_000, optional=True),
                io.Int.Input("checkpoint_every", default=500, min=0, max=100_000, optional=True),
            ],
            outputs=[io.String.Output(display_name="projector_name"), io.Image.Output(display_name="loss_curve")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, vae, clip, clip_vision, dataset_path, subject_word, projector_name, steps, batch_size,
                learning_rate, resolution, seed, resume, validation_split=0.1, validate_every=200,
                checkpoint_every=500) -> io.NodeOutput:
        check_numbers(cls, learning_rate=learning_rate, validation_split=validation_split)
        stem = os.path.basename(projector_name.strip()).removesuffix(".safetensors")
        if not stem:
            raise node_error(cls, "projector_name is empty: name the file to write in models/umm")
        dataset = os.path.expanduser(dataset_path.strip())
        if not os.path.isdir(dataset):
            raise node_error(cls, f"dataset_path: the folder {dataset!r} does not exist: give the full path of a "
                                  "folder of images with same-name .txt captions")
        bar = comfy.utils.ProgressBar(steps)

        def cache_progress(n, total):
            bar.update_absolute(n, total)
            mm.throw_exception_if_processing_interrupted()

        job = UMMTrainingJob(
            dataset=dataset, subject_word=subject_word,
            out_path=os.path.join(folder_paths.get_folder_paths("umm")[0], stem + ".safetensors"),
            run_dir=os.path.join(folder_paths.get_output_directory(), "umm_training", stem),
            config=TrainConfig(steps=steps, batch_size=batch_size, lr=learning_rate, val_every=validate_every,
                               checkpoint_every=checkpoint_every, seed=seed),
            vae=vae, base_model=model.model, load_base=lambda: trainable_model(model).model, clip=clip,
            clip_vision=clip_vision, resolution=resolution, val_fraction=validation_split, resume=resume,
            clip_vision_name=clip_vision_file(cls), device=mm.get_torch_device())
        with torch.inference_mode(False), torch.enable_grad(), reported_by(cls, ValueError):
            try:
                out = run_umm_job(job, cache_progress=cache_progress,
                                  on_cache=lambda report: log.info("UMM Train Projector: %s", report.text()),
                                  on_step=lambda step, total, record: bar.update_absolute(step, total),
                                  should_stop=mm.throw_exception_if_processing_interrupted)
            except SubjectWordError as error:
                raise node_error(cls, f"subject_word: {error}") from error
        curve = out.result.curve or render_loss_curve(out.result.records)
        return io.NodeOutput(os.path.basename(out.projector_path), image_tensor(curve))
