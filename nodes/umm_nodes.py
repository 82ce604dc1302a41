"""UMM-Diffusion: a subject image as a pseudo-word in CLIP's text space, sampled with mixed guidance."""
from __future__ import annotations

import comfy.samplers
import folder_paths
from comfy_api.latest import io

from ..emma_core.state_dict import WeightsFileError
from ..emma_core.umm import find_subject, load_projector, replace_positions
from .errors import node_error
from . import folders

PROJECTOR_TYPE = io.Custom("UMM_PROJECTOR")


class LoadProjector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UMMLoadProjector",
            display_name="Load UMM Projector",
            category="EMMA/UMM",
            description="Loads a UMM-Diffusion projector (image embedding -> pseudo-word) from models/umm.",
            inputs=[io.Combo.Input("projector_name", options=folders.safetensors_files("umm"))],
            outputs=[PROJECTOR_TYPE.Output(display_name="PROJECTOR")],
        )

    @classmethod
    def execute(cls, projector_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("umm", projector_name)
        try:
            return io.NodeOutput(load_projector(path))
        except WeightsFileError as error:
            raise node_error("Load UMM Projector", str(error)) from error


def _ids(chunks) -> list[int]:
    return [token[0] if isinstance(token, (tuple, list)) else token for chunk in chunks for token in chunk]


def subject_positions(clip, text: str, subject_word: str) -> tuple[dict, list[int]]:
    tokens = clip.tokenize(text)
    if len(tokens) != 1:
        raise node_error("UMM Subject Encode", "UMM needs an SD1.5 CLIP (one text encoder); got "
                         f"{', '.join(tokens)}")
    (key, prompt_chunks), = tokens.items()
    word = clip.tokenize(subject_word.strip())[key][0]
    inner = getattr(clip.tokenizer, f"clip_{key}", None)
    specials = {getattr(inner, name, None) for name in ("start_token", "end_token", "pad_token")} - {None}
    subject = [t for t in _ids([word]) if t not in specials]
    try:
        return tokens, find_subject(_ids(prompt_chunks), subject, subject_word.strip())
    except ValueError as error:
        raise node_error("UMM Subject Encode", str(error)) from error


class SubjectEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UMMSubjectEncode",
            display_name="UMM Subject Encode",
            category="EMMA/UMM",
            description="Encodes the prompt with CLIP (h_y) and a copy whose subject-word tokens are replaced "
                        "by the projected image embedding (h_u). Feed both to the UMM Guider.",
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("text", multiline=True, dynamic_prompts=True),
                io.String.Input("subject_word", default="dog"),
                io.ClipVisionOutput.Input("clip_vision_output"),
                PROJECTOR_TYPE.Input("projector"),
            ],
            outputs=[io.Conditioning.Output(display_name="h_u (subject)"),
                     io.Conditioning.Output(display_name="h_y (text)")],
        )

    @classmethod
    def execute(cls, clip, text, subject_word, clip_vision_output, projector) -> io.NodeOutput:
        tokens, positions = subject_positions(clip, text, subject_word)
        h_y, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        try:
            pseudo_word = projector(clip_vision_output["image_embeds"][:1].float().cpu())
        except ValueError as error:
            raise node_error("UMM Subject Encode", str(error)) from error
        h_u = replace_positions(h_y, positions, pseudo_word)
        meta = {"pooled_output": pooled}
        return io.NodeOutput([[h_u, dict(meta)]], [[h_y, dict(meta)]])


class UMMGuiderImpl(comfy.samplers.CFGGuider):
    """eps(empty) + s * [(1 - w)(eps(h_y) - eps(empty)) + w (eps(h_u) - eps(empty))], written as
    cfg_function(h_y vs empty, s) + s*w*(eps(h_u) - eps(h_y)) so other packs' CFG hooks still apply."""

    def set_guidance(self, s: float, w: float):
        self.s, self.w = s, w

    def set_conds(self, h_u, h_y, negative):
        self.inner_set_conds({"positive": h_u, "middle": h_y, "negative": negative})

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        negative, h_y, h_u = (self.conds.get(k) for k in ("negative", "middle", "positive"))
        out = comfy.samplers.calc_cond_batch(self.inner_model, [negative, h_y, h_u], x, timestep, model_options)
        guided = comfy.samplers.cfg_function(self.inner_model, out[1], out[0], self.s, x, timestep,
                                             model_options=model_options, cond=h_y, uncond=negative)
        return guided + (out[2] - out[1]) * (self.s * self.w)


class Guider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UMMGuider",
            display_name="UMM Guider",
            category="EMMA/UMM",
            description="Mixed guidance for SamplerCustomAdvanced: w trades subject fidelity (1) against text "
                        "faithfulness (0); s is the guidance scale.",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("h_u"),
                io.Conditioning.Input("h_y"),
                io.Conditioning.Input("negative"),
                io.Float.Input("s", default=7.5, min=0.0, max=100.0, step=0.1),
                io.Float.Input("w", default=0.5, min=0.0, max=1.0, step=0.01),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, h_u, h_y, negative, s, w) -> io.NodeOutput:
        guider = UMMGuiderImpl(model)
        guider.set_conds(h_u, h_y, negative)
        guider.set_guidance(s, w)
        return io.NodeOutput(guider)


NODES = [LoadProjector, SubjectEncode, Guider]
