"""EMMA multi-modal prompts: load modules, extract face / CLIP features, assemble into ELLA conditioning."""
from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..emma_core.adapters import Features
from ..emma_core.assemble import ConditionInput
from ..emma_core.clip_features import clip_features
from ..emma_core.emma_module import load_module
from ..emma_core.face import FaceError, aligned_crop, cached_analyzer, embed_faces, to_uint8_rgb
from ..emma_core.features_file import load_features, save_features
from ..emma_core.state_dict import WeightsFileError
from .errors import node_error
from .handles import connector_dtype
from . import folders
from .sampling import PROMPT_KEY

MODULE_TYPE = io.Custom("EMMA_MODULE")
FEATURES_TYPE = io.Custom("EMMA_FEATURES")
CONDITIONS_TYPE = io.Custom("EMMA_CONDITIONS")


class EMMAModuleHandle:
    def __init__(self, name: str, module):
        self.name = name
        self.module = module
        self.patcher = comfy.model_patcher.ModelPatcher(module, mm.get_torch_device(), mm.unet_offload_device())


class LoadModule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMALoadModule",
            display_name="Load EMMA Module",
            category="EMMA/loaders",
            description="Loads a trained EMMA condition module (face, object, portrait, style) from models/emma.",
            inputs=[io.Combo.Input("module_name", options=folders.safetensors_files("emma"))],
            outputs=[MODULE_TYPE.Output(display_name="EMMA_MODULE")],
        )

    @classmethod
    def execute(cls, module_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("emma", module_name)
        try:
            module = load_module(path, dtype=connector_dtype())
        except WeightsFileError as error:
            raise node_error("Load EMMA Module", str(error)) from error
        return io.NodeOutput(EMMAModuleHandle(module_name, module))


def insightface_root() -> str:
    return folder_paths.get_folder_paths("insightface")[0]


def insightface_packs() -> list[str]:
    models = os.path.join(insightface_root(), "models")
    found = sorted(d for d in os.listdir(models) if os.path.isdir(os.path.join(models, d))) \
        if os.path.isdir(models) else []
    return found or ["antelopev2", "buffalo_l"]


class FaceFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMAFaceFeatures",
            display_name="EMMA Face Features (InsightFace)",
            category="EMMA/features",
            description="ArcFace identity from models/insightface/models/<pack>. Several images are averaged "
                        "into one identity. face_index -1 = the largest face; 0, 1, ... = left to right.",
            inputs=[
                io.Image.Input("image"),
                io.Combo.Input("pack", options=insightface_packs()),
                io.Int.Input("face_index", default=-1, min=-1, max=32),
                io.Int.Input("det_size", default=640, min=128, max=1280, step=32),
                io.Combo.Input("provider", options=["auto", "cpu", "cuda"], default="auto"),
            ],
            outputs=[FEATURES_TYPE.Output(display_name="FEATURES"),
                     io.Image.Output(display_name="aligned_face")],
        )

    @classmethod
    def execute(cls, image, pack, face_index, det_size, provider) -> io.NodeOutput:
        try:
            analyzer = cached_analyzer(insightface_root(), pack, provider, det_size, 0.5)
            frames = [to_uint8_rgb(image[i], label=f"image {i + 1} of {image.shape[0]}")
                      for i in range(image.shape[0])]
            identity = embed_faces(frames, analyzer, index=None if face_index < 0 else face_index)
        except FaceError as error:
            raise node_error("EMMA Face Features", str(error)) from error
        crop = aligned_crop(frames[0], identity.faces[0], size=224)
        aligned = torch.from_numpy(crop).float().div(255).unsqueeze(0)
        features = Features("face", {k: v.float() for k, v in identity.as_tensors().items()})
        return io.NodeOutput(features, aligned)


class ImageFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMAImageFeatures",
            display_name="EMMA Image Features (CLIP Vision)",
            category="EMMA/features",
            description="Object / portrait features (patch tokens + global embedding) or style features (global "
                        "embedding) from the stock CLIP Vision model (ViT-H, as IPAdapter uses). A MASK makes "
                        "the object features object-centric.",
            inputs=[
                io.ClipVision.Input("clip_vision"),
                io.Image.Input("image"),
                io.Combo.Input("kind", options=["object / portrait", "style"], default="object / portrait"),
                io.Combo.Input("crop", options=["center", "none"], default="center"),
                io.Mask.Input("mask", optional=True),
            ],
            outputs=[FEATURES_TYPE.Output(display_name="FEATURES")],
        )

    @classmethod
    def execute(cls, clip_vision, image, kind, crop, mask=None) -> io.NodeOutput:
        output = clip_vision.encode_image(image, crop=crop == "center")
        try:
            features = clip_features(output["penultimate_hidden_states"], output["image_embeds"],
                                     "style" if kind == "style" else "clip_tokens", mask,
                                     image_size=clip_vision.image_size, crop=crop == "center")
        except ValueError as error:
            raise node_error("EMMA Image Features", str(error)) from error
        return io.NodeOutput(features)


class SaveFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMASaveFeatures",
            display_name="Save EMMA Features",
            category="EMMA/features",
            description="Saves features (an identity, a reference) as .safetensors in models/emma_features.",
            inputs=[FEATURES_TYPE.Input("features"), io.String.Input("name", default="identity")],
            outputs=[FEATURES_TYPE.Output(display_name="FEATURES")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, features, name) -> io.NodeOutput:
        stem = os.path.basename(name.strip()) or "features"
        folder = folder_paths.get_folder_paths("emma_features")[0]
        path = os.path.join(folder, stem if stem.endswith(".safetensors") else stem + ".safetensors")
        save_features(features, path)
        return io.NodeOutput(features)


class LoadFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMALoadFeatures",
            display_name="Load EMMA Features",
            category="EMMA/features",
            inputs=[io.Combo.Input("features_name", options=folders.safetensors_files("emma_features"))],
            outputs=[FEATURES_TYPE.Output(display_name="FEATURES")],
        )

    @classmethod
    def execute(cls, features_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("emma_features", features_name)
        try:
            return io.NodeOutput(load_features(path)[0])
        except WeightsFileError as error:
            raise node_error("Load EMMA Features", str(error)) from error


class Condition(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMACondition",
            display_name="EMMA Condition",
            category="EMMA/conditioning",
            description="One module with its features, weight and start/end (fractions of sampling). Chain "
                        "several through 'conditions' to assemble them.",
            inputs=[
                MODULE_TYPE.Input("module"),
                FEATURES_TYPE.Input("features"),
                io.Float.Input("weight", default=1.0, min=-2.0, max=5.0, step=0.05),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01),
                CONDITIONS_TYPE.Input("conditions", optional=True),
            ],
            outputs=[CONDITIONS_TYPE.Output(display_name="CONDITIONS")],
        )

    @classmethod
    def execute(cls, module, features, weight, start, end, conditions=None) -> io.NodeOutput:
        try:
            module.module.adapter.check(features)
        except ValueError as error:
            raise node_error("EMMA Condition", f"module {module.name}: {error}") from error
        item = ConditionInput(module.module, features, weight, start, end)
        item.handle = module  # the patcher travels with the condition for memory management
        return io.NodeOutput([*(conditions or []), item])


class Assemble(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMAAssemble",
            display_name="EMMA Assemble",
            category="EMMA/conditioning",
            description="Adds the chained conditions to ELLA conditioning: their gated residuals are summed into "
                        "the connector at every step (no retraining). The negative stays text-only unless "
                        "apply_to_negative is on. Output is ordinary CONDITIONING (masks, combine, ControlNet).",
            inputs=[
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                CONDITIONS_TYPE.Input("conditions"),
                io.Boolean.Input("apply_to_negative", default=False),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, negative, conditions, apply_to_negative) -> io.NodeOutput:
        out_negative = assemble(negative, conditions, "negative") if apply_to_negative else negative
        return io.NodeOutput(assemble(positive, conditions, "positive"), out_negative)


def assemble(conditioning, conditions, which: str):
    out = []
    for tensor, meta in conditioning:
        if PROMPT_KEY not in meta:
            raise node_error("EMMA Assemble", f"the {which} input is not ELLA conditioning: connect an "
                             "'ELLA Text Encode' node (EMMA modules act inside ELLA's connector)")
        meta = meta.copy()
        meta[PROMPT_KEY] = meta[PROMPT_KEY].with_conditions(conditions)
        extra = [c.handle.patcher for c in conditions if c.handle.patcher not in meta.get("additional_models", [])]
        meta["additional_models"] = [*meta.get("additional_models", []), *extra]
        out.append([tensor, meta])
    return out


NODES = [LoadModule, FaceFeatures, ImageFeatures, SaveFeatures, LoadFeatures, Condition, Assemble]
