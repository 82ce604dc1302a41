"""UMM-Diffusion: a subject image as a pseudo-word in CLIP's text space, sampled with mixed guidance."""
from __future__ import annotations

from comfy_api.latest import io
from comfy_extras.nodes_custom_sampler import Guider_DualCFG

from ..emma_core.umm import load_projector, replace_positions, subject_embeds, subject_tokens, text_states
from .errors import check_numbers, reported_by
from .umm_train_nodes import TrainProjector
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
        path = folders.resolve(cls, "projector_name", "umm", projector_name)
        with reported_by(cls):
            return io.NodeOutput(load_projector(path))


def subject_positions(clip, text: str, subject_word: str) -> tuple[dict, list[int]]:
    with reported_by(SubjectEncode, ValueError):
        return subject_tokens(clip, text, subject_word)


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
        h_y, pooled = text_states(clip, tokens)
        with reported_by(cls, ValueError):
            pseudo_word = projector(subject_embeds(clip_vision_output))
        h_u = replace_positions(h_y, positions, pseudo_word)
        meta = {"pooled_output": pooled}
        return io.NodeOutput([[h_u, dict(meta)]], [[h_y, dict(meta)]])


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
        check_numbers(cls, s=s, w=w)
        # eps(empty) + s [(1 - w)(eps(h_y) - eps(empty)) + w (eps(h_u) - eps(empty))]
        #   = eps(empty) + s (eps(h_y) - eps(empty)) + s w (eps(h_u) - eps(h_y)):
        # ComfyUI's dual CFG with cond1 = h_u, cond2 = h_y, cfg1 = s w, cfg2 = s (other packs' CFG hooks apply).
        guider = Guider_DualCFG(model)
        guider.set_conds(h_u, h_y, negative)
        guider.set_cfg(s * w, s)
        return io.NodeOutput(guider)


NODES = [LoadProjector, SubjectEncode, Guider, TrainProjector]
