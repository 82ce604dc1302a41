"""EMMA multi-modal prompts: load modules, extract face / CLIP features, assemble into ELLA conditioning."""
from __future__ import annotations

import logging
import os

import folder_paths
import torch
from comfy_api.latest import io

from ..emma_core.assemble import ConditionInput
from ..emma_core.clip_features import encoder_name as clip_encoder_name, image_features
from ..emma_core.emma_module import text_length_warning
from ..emma_core.face import aligned_crop, encoder_name as face_encoder_name
from ..emma_core.face.features import face_features, face_frames
from ..emma_core.features_file import load_features, save_features
from .errors import check_numbers, node_error, reported_by
from .handles import load_emma_handle
from . import folders
from .sampling import CONNECTOR_KEY, PROMPT_KEY

MODULE_TYPE = io.Custom("EMMA_MODULE")
FEATURES_TYPE = io.Custom("EMMA_FEATURES")
CONDITIONS_TYPE = io.Custom("EMMA_CONDITIONS")
log = logging.getLogger("ComfyUI-EMMA")


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
        path = folders.resolve(cls, "module_name", "emma", module_name)
        with reported_by(cls):
            return io.NodeOutput(load_emma_handle(path, module_name))


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
                io.Combo.Input("pack", options=folders.insightface_packs()),
                io.Int.Input("face_index", default=-1, min=-1, max=32),
                io.Int.Input("det_size", default=640, min=128, max=1280, step=32),
                io.Combo.Input("provider", options=["auto", "cpu", "cuda"], default="auto"),
            ],
            outputs=[FEATURES_TYPE.Output(display_name="FEATURES"),
                     io.Image.Output(display_name="aligned_face")],
        )

    @classmethod
    def execute(cls, image, pack, face_index, det_size, provider) -> io.NodeOutput:
        with reported_by(cls):
            analyzer = folders.face_analyzer(cls, "pack", pack, provider, det_size=det_size, det_thresh=0.5)
            frames = face_frames(image)
            features, identity = face_features(frames, analyzer, None if face_index < 0 else face_index,
                                               face_encoder_name(pack))
        crop = aligned_crop(frames[0], identity.faces[0], size=224)
        return io.NodeOutput(features, torch.from_numpy(crop).float().div(255).unsqueeze(0))


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
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, clip_vision, image, kind, crop, mask=None) -> io.NodeOutput:
        with reported_by(cls, ValueError):
            features = image_features(clip_vision, image, "style" if kind == "style" else "clip_tokens", mask,
                                      crop=crop == "center", encoder=clip_encoder_name(clip_vision_file(cls)))
        return io.NodeOutput(features)


def clip_vision_file(node) -> str:
    """The file of the CLIP vision model when a stock Load CLIP Vision feeds `node` in the running graph (ComfyUI's
    model object does not keep its file name); "" when it is not known."""
    hidden = getattr(node, "hidden", None)
    prompt = getattr(hidden, "prompt", None) or {}
    link = prompt.get(str(getattr(hidden, "unique_id", "")), {}).get("inputs", {}).get("clip_vision")
    loader = prompt.get(str(link[0]), {}) if isinstance(link, list) and link else {}
    name = loader.get("inputs", {}).get("clip_name") if loader.get("class_type") == "CLIPVisionLoader" else None
    return name if isinstance(name, str) else ""


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
        path = folders.resolve(cls, "features_name", "emma_features", features_name)
        with reported_by(cls):
            return io.NodeOutput(load_features(path)[0])


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
        check_numbers(cls, weight=weight, start=start, end=end)
        if start >= end:
            raise node_error(cls, f"start ({start:g}) is not before end ({end:g}): the condition would never act. "
                             "Give start < end (fractions of sampling: 0 = first step, 1 = the end); weight 0 "
                             "turns a condition off")
        try:
            module.module.adapter.check(features)
        except ValueError as error:
            raise node_error(cls, f"module {module.name}: {error}") from error
        _warn_if_other_encoder(module, features)
        return io.NodeOutput([*(conditions or []), ConditionInput(module.module, features, weight, start, end, module)])


_WARNED_ENCODERS: set = set()  # (module file, features' encoder) pairs already warned about


def _warn_if_other_encoder(module, features) -> None:
    """Features of the right kind and shape from another encoder run, but the module never saw their like."""
    trained_on = getattr(module.module, "feature_encoder", "")
    key = (module.name, features.encoder)
    if features.encoder and trained_on and features.encoder != trained_on and key not in _WARNED_ENCODERS:
        _WARNED_ENCODERS.add(key)
        log.warning("EMMA Condition: module %s was trained on features from %s, but these come from %s; it may "
                    "follow them less well (use the encoder it was trained with)", module.name, trained_on,
                    features.encoder)


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
            raise node_error(Assemble, f"the {which} input is not ELLA conditioning: connect an "
                             "'ELLA Text Encode' node (EMMA modules act inside ELLA's connector)")
        connector = meta[CONNECTOR_KEY].connector.config
        for c in conditions:
            if c.module.config.ella != connector:
                raise node_error(Assemble, f"module {c.handle.name} was made for an ELLA connector with "
                                 f"{c.module.config.ella.describe()}, but the {which} prompt's connector "
                                 f"{meta[CONNECTOR_KEY].name} has {connector.describe()}: use a module "
                                 "trained with this connector")
            note = text_length_warning(c.module, c.handle.name, meta[PROMPT_KEY].length)
            if note:  # files from before the module recorded its text length: nothing to compare
                log.warning("EMMA Assemble (%s prompt): %s", which, note)
        meta = meta.copy()
        meta[PROMPT_KEY] = meta[PROMPT_KEY].with_conditions(conditions)
        extra = [c.handle.patcher for c in conditions if c.handle.patcher not in meta.get("additional_models", [])]
        meta["additional_models"] = [*meta.get("additional_models", []), *extra]
        out.append([tensor, meta])
    return out


NODES = [LoadModule, FaceFeatures, ImageFeatures, SaveFeatures, LoadFeatures, Condition, Assemble]
