"""ELLA text conditioning: load the connector and flan-T5, encode prompts, apply to a MODEL."""
from __future__ import annotations

import os

import comfy.model_management as mm
import folder_paths
import torch
from comfy_api.latest import io

from ..emma_core.ella_file import OFFICIAL_FILENAME
from ..emma_core.prompt import ELLAPrompt
from ..emma_core.state_dict import WeightsFileError
from ..emma_core.t5 import FIXED_LENGTH
from .errors import display_name, node_error, reported_by
from . import folders
from .handles import load_ella_handle, load_t5_handle
from .sampling import CONNECTOR_KEY, ELLA_HOOKS, PROMPT_KEY, apply_to_model

ELLA_TYPE = io.Custom("EMMA_ELLA")
T5_TYPE = io.Custom("EMMA_T5")
LENGTH_MODES = ["flexible", f"fixed {FIXED_LENGTH}"]
# The context placed in the CONDITIONING tensor before sampling: a real tensor (ControlNet, masks and
# combine nodes need one) for graphs without the Apply node; with it, every call is recomputed exactly.
PLACEHOLDER_TIMESTEP = 500.0
TOKENIZER_DIR = os.path.join(os.path.dirname(folder_paths.__file__), "comfy", "text_encoders", "t5_tokenizer")


class LoadELLA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMALoadELLA",
            display_name="Load ELLA Connector",
            category="EMMA/loaders",
            description=f"Loads ELLA's timestep-aware connector ({OFFICIAL_FILENAME}) from models/ella.",
            inputs=[io.Combo.Input("ella_name", options=folders.safetensors_files("ella"))],
            outputs=[ELLA_TYPE.Output(display_name="ELLA")],
        )

    @classmethod
    def execute(cls, ella_name) -> io.NodeOutput:
        path = folders.resolve(cls, "ella_name", "ella", ella_name)
        try:
            return io.NodeOutput(load_ella_handle(path, ella_name))
        except WeightsFileError as error:
            raise node_error(cls, f"{error}\nExpected the ELLA SD1.5 file "
                             f"({OFFICIAL_FILENAME}) in {folder_paths.get_folder_paths('ella')}") from error


class LoadT5(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMALoadT5",
            display_name="Load flan-T5 Encoder (ELLA)",
            category="EMMA/loaders",
            description="Loads the flan-t5-xl encoder from models/text_encoders: one .safetensors file or a "
                        "Hugging Face folder (shown as 'name/'). auto = fp16 on GPU, fp32 on CPU.",
            inputs=[
                io.Combo.Input("t5_name", options=folders.t5_choices()),
                io.Combo.Input("precision", options=["auto", "fp16", "bf16", "fp32"], default="auto"),
                io.Boolean.Input("keep_loaded", default=False, optional=True,
                                 tooltip="Off: T5 leaves the compute device when sampling starts (GPU: moved "
                                         "to RAM; CPU only: its weights are freed and read from the file again "
                                         "for the next new prompt). On: ComfyUI unloads it only when short of "
                                         "memory. Repeated prompts never run T5 either way."),
            ],
            outputs=[T5_TYPE.Output(display_name="T5")],
        )

    @classmethod
    def execute(cls, t5_name, precision, keep_loaded=False) -> io.NodeOutput:
        with reported_by(cls):
            return io.NodeOutput(load_t5_handle(folders.resolve_t5(cls, t5_name), t5_name, TOKENIZER_DIR, precision,
                                                keep_loaded))


def ella_conditioning(ella, t5, text: str, length: str, clip_conditioning=None):
    fixed = FIXED_LENGTH if length != "flexible" else None
    try:
        features = t5.encode(text, fixed)
    except WeightsFileError as error:  # T5 freed while sampling on the CPU, and its file changed since
        raise node_error(ELLATextEncode, f"could not read the T5 encoder {t5.name} again: {error}\n"
                         f"Put the file back, or reload it with {display_name(LoadT5)} (keep_loaded on keeps "
                         "T5 in memory between prompts)") from error
    if features.shape[-1] != ella.connector.config.input_dim:
        raise node_error(ELLATextEncode, f"the T5 encoder {t5.name} gives {features.shape[-1]}-d features "
                         f"but the connector expects {ella.connector.config.input_dim} (flan-t5-xl)")
    clip_tokens = None
    if clip_conditioning:
        clip_tokens = clip_conditioning[0][0][0]
        if clip_tokens.shape[-1] != ella.connector.config.width:
            raise node_error(ELLATextEncode, f"clip_conditioning has width {clip_tokens.shape[-1]}; "
                             f"SD1.5 CLIP gives {ella.connector.config.width}")
    prompt = ELLAPrompt(features, clip_tokens)
    mm.load_models_gpu([ella.patcher])
    with torch.no_grad():
        placeholder = prompt.context(ella.connector, torch.tensor([PLACEHOLDER_TIMESTEP])).float().cpu()
    # The hook brings the per-call wrappers to whatever samples this conditioning, Apply ELLA/EMMA to Model or not.
    meta = {PROMPT_KEY: prompt, CONNECTOR_KEY: ella, "additional_models": [ella.patcher], "hooks": ELLA_HOOKS}
    return [[placeholder, meta]]


class ELLATextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMATextEncode",
            display_name="ELLA Text Encode",
            category="EMMA/conditioning",
            description="Encodes text with flan-T5 for ELLA. Use an empty text for the negative (as ELLA does). "
                        "The conditioning recomputes the connector at the true timestep of every sampler step "
                        "by itself (a ComfyUI conditioning hook).",
            inputs=[
                ELLA_TYPE.Input("ella"),
                T5_TYPE.Input("t5"),
                io.String.Input("text", multiline=True, dynamic_prompts=True),
                io.Combo.Input("length", options=LENGTH_MODES, default="flexible",
                               tooltip="flexible: true token count (best for short prompts); "
                                       "fixed 128: padded/truncated as ELLA was trained"),
                io.Conditioning.Input("clip_conditioning", optional=True,
                                      tooltip="CLIP tokens appended after the connector's (LoRA trigger "
                                              "words, community checkpoints)"),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, ella, t5, text, length, clip_conditioning=None) -> io.NodeOutput:
        return io.NodeOutput(ella_conditioning(ella, t5, text, length, clip_conditioning))


class ApplyToModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMMAApplyToModel",
            display_name="Apply ELLA/EMMA to Model",
            category="EMMA",
            description="Optional: ELLA conditioning brings its per-step wrappers by itself. This node adds the same "
                        "wrappers to a clone of the model, for graphs made before that (it changes nothing when "
                        "both are present).",
            inputs=[io.Model.Input("model")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(apply_to_model(model))


NODES = [LoadELLA, LoadT5, ELLATextEncode, ApplyToModel]
