"""Writes the example workflows in workflows/ in the UI format the ComfyUI frontend saves and users share.

The JSON files are the product; this script is how they are kept consistent (ids, links, slots, notes,
groups). Run `python -m devtools.build_workflows` after changing a node's inputs, then load them in the
browser. Every workflow explains itself in the graph: a Markdown note naming each model file it loads (its
folder, exact name, link and size, or how to make it), groups around models, prompt, references and
sampling, and the reference pictures it names, which the pack ships in workflows/input/ and copies into
ComfyUI's input folder when it loads (nodes/example_inputs.py).
"""
from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from emma_core.train.job import DEFAULT_EMA, DEFAULT_REFERENCE_VIEWS

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
REPO_URL = "https://github.com/emma-comfy/ComfyUI-EMMA"
DOCS_URL = REPO_URL + "/blob/main/docs/"

# The real file names users place (README's model table); tests swap in generated stand-ins.
SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
ELLA_FILE = "ella-sd1.5-tsc-t5xl.safetensors"
T5_FOLDER = "flan-t5-xl/"
CANNY_CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
CLIP_VISION_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
FACE_PACK = "antelopev2"
MODEL_URLS = {  # the same downloads as [[tool.comfy.Models]] in pyproject.toml
    SD15_CHECKPOINT: "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                     "v1-5-pruned-emaonly-fp16.safetensors",
    ELLA_FILE: "https://huggingface.co/QQGYLab/ELLA/resolve/main/ella-sd1.5-tsc-t5xl.safetensors",
    CANNY_CONTROLNET: "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                      "control_v11p_sd15_canny_fp16.safetensors",
    CLIP_VISION_H: "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",
}
T5_URL = "https://huggingface.co/google/flan-t5-xl/tree/main"
FACE_PACK_URL = "https://github.com/deepinsight/insightface/releases/download/model-zoo/antelopev2.zip"

# EMMA modules: no one has released any; train them with the pack's trainer under these names.
FACE_MODULE = "emma-face.safetensors"
OBJECT_MODULE = "emma-object.safetensors"
STYLE_MODULE = "emma-style.safetensors"
UMM_PROJECTOR = "umm-projector-sd15-vit-h.safetensors"
EMU_LORA = "emu-quality-tuned.safetensors"  # what 'Emu Quality-Tune' / scripts/emu_tune.py save into models/loras

# Reference pictures shipped in workflows/input/ (sources and licences: workflows/input/SOURCES.md).
FACE_IMAGE = "emma_face.png"            # Eileen Collins, NASA portrait (public domain)
SECOND_FACE_IMAGE = "emma_face_2.jpg"   # Grace Hopper, U.S. Navy portrait (public domain)
OBJECT_IMAGE = "emma_object.jpg"        # a cup of coffee (CC0)
STYLE_IMAGE = "emma_style.jpg"          # the Hubble eXtreme Deep Field (public domain)
CONTROL_IMAGE = "example.png"           # ComfyUI's own input/example.png

TRAIN_IT = f"no public file: train it with the pack's trainer ([docs/training.md]({DOCS_URL}training.md))"


@dataclass(frozen=True)
class ModelFile:
    folder: str   # under ComfyUI/models/ (or the same key in extra_model_paths.yaml)
    source: str   # Markdown: the link and size, or how to make the file


MODELS = {
    SD15_CHECKPOINT: ModelFile("checkpoints", f"[download]({MODEL_URLS[SD15_CHECKPOINT]}), 2.1 GB "
                                              "(any SD1.5 checkpoint works: pick yours in the list)"),
    ELLA_FILE: ModelFile("ella", f"[download]({MODEL_URLS[ELLA_FILE]}), 134 MB"),
    T5_FOLDER: ModelFile("text_encoders", f"a folder: from [google/flan-t5-xl]({T5_URL}) take `config.json` and "
                                          "the two `model-0000?-of-00002.safetensors` shards (about 11 GB); "
                                          "nothing else is read"),
    CANNY_CONTROLNET: ModelFile("controlnet", f"[download]({MODEL_URLS[CANNY_CONTROLNET]}), 723 MB"),
    CLIP_VISION_H: ModelFile("clip_vision", f"[download]({MODEL_URLS[CLIP_VISION_H]}) (`model.safetensors`, "
                                            "rename it), 2.5 GB"),
    FACE_PACK: ModelFile("insightface/models", f"unzip [antelopev2.zip]({FACE_PACK_URL}) so that the five "
                                               "`.onnx` files lie in `antelopev2/` (no single-file download)"),
    FACE_MODULE: ModelFile("emma", TRAIN_IT),
    OBJECT_MODULE: ModelFile("emma", TRAIN_IT),
    STYLE_MODULE: ModelFile("emma", TRAIN_IT),
    UMM_PROJECTOR: ModelFile("umm", TRAIN_IT),
    EMU_LORA: ModelFile("loras", "no public file: made by Emu Quality-Tune "
                                 "(the `emu_curate_and_tune` workflow or scripts/emu_tune.py)"),
}
# The loader inputs whose value names a model file, by node type (the note of a workflow names each one).
MODEL_INPUTS = {"CheckpointLoaderSimple": 0, "EMMALoadELLA": 0, "EMMALoadT5": 0, "ControlNetLoader": 0,
                "CLIPVisionLoader": 0, "EMMALoadModule": 0, "UMMLoadProjector": 0, "LoraLoader": 0,
                "EMMALoadFeatures": 0, "EMMAFaceFeatures": 0}
CONDITION_HELP = ("**EMMA Condition**: `weight` scales the module's effect (0 = off, 1 = as trained; lower it "
                  "when the reference takes over the text), `start`/`end` the part of the sampling it acts on "
                  "(0 = first step, 1 = last; the early steps set colour and layout).")
REFERENCE_HELP = ("The reference pictures are shipped with the pack and copied into ComfyUI's `input` folder "
                  "when it first loads; pick your own in each Load Image node.")

POSITIVE = ("A photograph of a red vintage bicycle leaning against a weathered blue wooden door. "
            "Morning sunlight casts long shadows across the cobblestone street, and a small potted "
            "plant with white flowers sits on the doorstep. Shallow depth of field, warm tones.")

# Emu Curate Folder / Emu Quality-Tune widget values, in the nodes' input order (nodes/emu_nodes.py).
EMU_CURATE_WIDGETS = ["", 512, 0.5, 2.0, True, 6, "", 0.0, "", 5.0, 8]
EMU_TUNE_WIDGETS = ["", "", EMU_LORA, "lora", 15000, 0.0, 16, 5, 100, 64, 4, 0.1, 512, 0, "fixed"]
# EMMA Train Module's widget values, in the node's input order (nodes/train_nodes.py): an object module at the
# node's defaults (the frontend adds a "control after generate" widget after the seed).
FIRST_MODULE = "my-first-object-module"
EMMA_TRAIN_WIDGETS = ["", "object", FIRST_MODULE, 2000, 4, 1e-4, 512, 0.1, 200, 0, 500, 0, "fixed", True, "fixed 128",
                      FACE_PACK, 250, 1, "auto", -1, 0.1, 0.1, DEFAULT_EMA, DEFAULT_REFERENCE_VIEWS, 0.0, True, "auto"]

# socket types of each output, by node type (what the frontend writes into "outputs")
OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "EMMALoadELLA": [("ELLA", "EMMA_ELLA")],
    "EMMALoadT5": [("T5", "EMMA_T5")],
    "EMMATextEncode": [("CONDITIONING", "CONDITIONING")],
    "EMMAApplyToModel": [("MODEL", "MODEL")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "LoadImage": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    "Canny": [("IMAGE", "IMAGE")],
    "ControlNetLoader": [("CONTROL_NET", "CONTROL_NET")],
    "ControlNetApplyAdvanced": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    "Note": [],
    "MarkdownNote": [],
    "PreviewImage": [],
    "EmuCurateFolder": [("report", "STRING"), ("contact_sheet", "IMAGE"), ("review_list", "STRING")],
    "EmuQualityTune": [("lora_name", "STRING"), ("loss_curve", "IMAGE"), ("report", "STRING")],
    "EMMATrainModule": [("module_name", "STRING"), ("loss_curve", "IMAGE"), ("preview", "IMAGE")],
    "EMMALoadModule": [("EMMA_MODULE", "EMMA_MODULE")],
    "EMMAFaceFeatures": [("FEATURES", "EMMA_FEATURES"), ("aligned_face", "IMAGE")],
    "EMMAImageFeatures": [("FEATURES", "EMMA_FEATURES")],
    "EMMACondition": [("CONDITIONS", "EMMA_CONDITIONS")],
    "EMMAAssemble": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    "EMMASaveFeatures": [("FEATURES", "EMMA_FEATURES")],
    "CLIPVisionLoader": [("CLIP_VISION", "CLIP_VISION")],
    "ConditioningSetMask": [("CONDITIONING", "CONDITIONING")],
    "ConditioningCombine": [("CONDITIONING", "CONDITIONING")],
    "SolidMask": [("MASK", "MASK")],
    "MaskComposite": [("MASK", "MASK")],
    "CLIPVisionEncode": [("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "UMMLoadProjector": [("PROJECTOR", "UMM_PROJECTOR")],
    "UMMSubjectEncode": [("h_u (subject)", "CONDITIONING"), ("h_y (text)", "CONDITIONING")],
    "UMMGuider": [("GUIDER", "GUIDER")],
    "RandomNoise": [("NOISE", "NOISE")],
    "KSamplerSelect": [("SAMPLER", "SAMPLER")],
    "BasicScheduler": [("SIGMAS", "SIGMAS")],
    "SamplerCustomAdvanced": [("output", "LATENT"), ("denoised_output", "LATENT")],
    "LoraLoader": [("MODEL", "MODEL"), ("CLIP", "CLIP")],
    "EMMALoadFeatures": [("FEATURES", "EMMA_FEATURES")],
}


GROUP_COLOURS = {"Models": "#3f789e", "Prompt": "#8A8", "References": "#b58b2a", "Sampling": "#a1309b",
                 "ControlNet": "#88A", "Regions": "#b06634", "Curate": "#b58b2a", "Quality-tune": "#a1309b",
                 "Training": "#a1309b", "Progress": "#8A8"}
TITLE_HEIGHT = 30   # the frontend draws a node's title bar above its `pos`
GROUP_HEADER = 44   # room for the group's title above its first node


class UIWorkflow:
    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def add(self, type_: str, widgets: list, inputs: dict | None = None, pos=(0, 0), size=(320, 120),
            title: str | None = None, mode: int = 0) -> int:
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
            "order": node_id - 1, "mode": mode, "inputs": [],
            "outputs": [{"name": n, "type": t, "slot_index": i, "links": []}
                        for i, (n, t) in enumerate(OUTPUTS[type_])],
            "properties": {"Node name for S&R": type_}, "widgets_values": widgets,
        }
        if title:
            node["title"] = title
        # The frontend's schema wants a download url per listed model; files with no single download (the
        # T5 folder, trained EMMA/UMM/Emu files) are named in the note instead.
        model = widgets[MODEL_INPUTS[type_]] if type_ in MODEL_INPUTS and widgets else None
        if model in MODEL_URLS:
            node["properties"]["models"] = [{"name": model, "url": MODEL_URLS[model],
                                             "directory": MODELS[model].folder}]
        self.nodes.append(node)
        for name, (source, source_slot) in (inputs or {}).items():
            self.link(source, source_slot, node_id, name)
        return node_id

    def link(self, source: int, source_slot: int, target: int, name: str) -> None:
        """An input linked after its node was added (a node placed before the node that feeds it)."""
        src, node = self.nodes[source - 1], self.nodes[target - 1]
        link_id = len(self.links) + 1
        link_type = src["outputs"][source_slot]["type"]
        self.links.append([link_id, source, source_slot, target, len(node["inputs"]), link_type])
        src["outputs"][source_slot]["links"].append(link_id)
        node["inputs"].append({"name": name, "type": link_type, "link": link_id})

    def note(self, title: str, text: str, pos=(0, 0), size=(440, 600)) -> int:
        """The workflow's explanation, as a Markdown note (the frontend renders it; the API graph drops it)."""
        return self.add("MarkdownNote", [f"## {title}\n\n{text}"], pos=pos, size=size, title="Read me")

    def group(self, title: str, node_ids: list[int]) -> None:
        """A titled box around `node_ids` (LiteGraph's group: moved together, collapsed together)."""
        boxes = [(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
                 for n in self.nodes if n["id"] in node_ids]
        x0, y0 = min(b[0] for b in boxes) - 15, min(b[1] for b in boxes) - GROUP_HEADER
        x1, y1 = max(b[2] for b in boxes) + 15, max(b[3] for b in boxes) + 15
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": GROUP_COLOURS[title], "font_size": 24, "flags": {}})

    def to_json(self) -> dict:
        return {"id": "", "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": 0.7, "offset": [60, 80]}}, "version": 0.4}


def model_lines(*names: str) -> str:
    """The note's list of model files: folder, exact name, and where the file comes from."""
    lines = []
    for name in names:
        m = MODELS[name]
        lines.append(f"- `models/{m.folder}/{name}`: {m.source}")
    return "**Model files** (put each in the folder shown, or pick another in the node's list):\n" + "\n".join(lines)


def note_text(what: str, models: list[str], *more: str) -> str:
    return "\n\n".join([what, model_lines(*models), *more])


# Columns and rows of every layout: the note, models, prompt, sampling side by side; references below.
NOTE_X, MODELS_X, PROMPT_X, SAMPLE_X, OUT_X = 0, 480, 840, 1300, 1660
REFERENCE_Y = 660
REFERENCE_ROW = 420


def ella_text_nodes(w: UIWorkflow, text: str, clip_vision: bool = False) -> dict:
    """Checkpoint, connector, T5 (and CLIP vision), positive and negative prompts. No Apply ELLA/EMMA to Model:
    ELLA conditioning carries its per-step wrappers itself."""
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(MODELS_X, 0), size=(320, 100))
    ella = w.add("EMMALoadELLA", [ELLA_FILE], pos=(MODELS_X, 160), size=(320, 60))
    t5 = w.add("EMMALoadT5", [T5_FOLDER, "auto", False], pos=(MODELS_X, 280), size=(320, 82))
    models = [ckpt, ella, t5]
    vision = None
    if clip_vision:
        vision = w.add("CLIPVisionLoader", [CLIP_VISION_H], pos=(MODELS_X, 420), size=(320, 60))
        models.append(vision)
    positive = w.add("EMMATextEncode", [text, "flexible"], {"ella": (ella, 0), "t5": (t5, 0)},
                     pos=(PROMPT_X, 0), size=(420, 200), title="ELLA Text Encode (positive)")
    negative = w.add("EMMATextEncode", ["", "flexible"], {"ella": (ella, 0), "t5": (t5, 0)},
                     pos=(PROMPT_X, 260), size=(420, 130), title="ELLA Text Encode (negative: empty, as ELLA)")
    return dict(ckpt=ckpt, ella=ella, t5=t5, vision=vision, positive=positive, negative=negative, models=models,
                prompt=[positive, negative])


def sampler_tail(w: UIWorkflow, model, positive, negative, vae, prefix: str, extra=()) -> None:
    """Empty latent, KSampler (CFG 7.5: the middle of ELLA's 7 to 8), decode, save; grouped with `extra`."""
    latent = w.add("EmptyLatentImage", [512, 512, 1], pos=(SAMPLE_X, 0), size=(320, 110))
    sampled = w.add("KSampler", [42, "fixed", 25, 7.5, "dpmpp_2m", "karras", 1.0],
                    {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)},
                    pos=(SAMPLE_X, 170), size=(320, 270))
    image = w.add("VAEDecode", [], {"samples": (sampled, 0), "vae": vae}, pos=(OUT_X, 0), size=(220, 50))
    save = w.add("SaveImage", [prefix], {"images": (image, 0)}, pos=(OUT_X, 110), size=(400, 450))
    w.group("Sampling", [*extra, latent, sampled, image, save])


def ella_text_to_image() -> dict:
    w = UIWorkflow()
    n = ella_text_nodes(w, POSITIVE)
    w.note("ELLA text to image", note_text(
        "A long, descriptive prompt through ELLA: flan-t5-xl reads it and the ELLA connector turns it into the "
        "UNet's text tokens, at the true timestep of every sampler step. The negative stays empty, as ELLA was "
        "trained. Everything here has a public download.", [SD15_CHECKPOINT, ELLA_FILE, T5_FOLDER],
        "**Settings**: CFG 7 to 8; `length` `flexible` encodes the prompt at its own length."))
    w.group("Models", n["models"])
    w.group("Prompt", n["prompt"])
    sampler_tail(w, (n["ckpt"], 0), (n["positive"], 0), (n["negative"], 0), (n["ckpt"], 2), "EMMA/ella")
    return w.to_json()


def controlnet(w: UIWorkflow, positive, negative, x=MODELS_X, y=REFERENCE_Y) -> tuple:
    """Canny edges of the control image through the SD1.5 canny ControlNet; the ELLA context reaches it too."""
    image = w.add("LoadImage", [CONTROL_IMAGE, "image"], pos=(x, y), size=(320, 320), title="Control image")
    edges = w.add("Canny", [0.4, 0.8], {"image": (image, 0)}, pos=(x + 360, y), size=(300, 90))
    control = w.add("ControlNetLoader", [CANNY_CONTROLNET], pos=(x + 360, y + 140), size=(320, 60))
    # No vae input: an SD1.5 ControlNet takes the control image as pixels (only some other kinds need it).
    applied = w.add("ControlNetApplyAdvanced", [0.8, 0.0, 1.0],
                    {"positive": positive, "negative": negative, "control_net": (control, 0),
                     "image": (edges, 0)}, pos=(x + 360, y + 260), size=(320, 190))
    w.group("ControlNet", [image, edges, control, applied])
    return (applied, 0), (applied, 1)


def ella_controlnet() -> dict:
    w = UIWorkflow()
    n = ella_text_nodes(w, POSITIVE)
    w.note("ELLA text + ControlNet", note_text(
        "ELLA text conditioning with a canny ControlNet: the edges of the control image fix the layout, the "
        "prompt the content. The ControlNet sees the same per-step ELLA context as the UNet.",
        [SD15_CHECKPOINT, ELLA_FILE, T5_FOLDER, CANNY_CONTROLNET],
        f"**Control image**: ComfyUI's own `{CONTROL_IMAGE}` (pick any picture; its edges are kept).\n\n"
        "**Apply ControlNet**: `strength` 0.8; lower it to let the prompt move the edges."))
    w.group("Models", n["models"])
    w.group("Prompt", n["prompt"])
    positive, negative = controlnet(w, (n["positive"], 0), (n["negative"], 0))
    sampler_tail(w, (n["ckpt"], 0), positive, negative, (n["ckpt"], 2), "EMMA/ella_controlnet")
    return w.to_json()


def face_condition(w: UIWorkflow, row: int, image_name=FACE_IMAGE, previous=None, title="Face reference"):
    """Returns (the condition's output, its node ids)."""
    y = REFERENCE_Y + row * REFERENCE_ROW
    image = w.add("LoadImage", [image_name, "image"], pos=(MODELS_X, y), size=(320, 340), title=title)
    face = w.add("EMMAFaceFeatures", [FACE_PACK, -1, 640, "auto"], {"image": (image, 0)},
                 pos=(PROMPT_X, y), size=(320, 150))
    module = w.add("EMMALoadModule", [FACE_MODULE], pos=(PROMPT_X, y + 210), size=(320, 60))
    inputs = {"module": (module, 0), "features": (face, 0)}
    if previous:
        inputs["conditions"] = previous
    condition = w.add("EMMACondition", [1.0, 0.0, 1.0], inputs, pos=(PROMPT_X + 360, y), size=(280, 150))
    return (condition, 0), [image, face, module, condition]


def image_condition(w: UIWorkflow, vision, module_file, kind, image_name, row: int, previous=None,
                    masked=False, title="Object reference"):
    y = REFERENCE_Y + row * REFERENCE_ROW
    image = w.add("LoadImage", [image_name, "image"], pos=(MODELS_X, y), size=(320, 340), title=title)
    inputs = {"clip_vision": vision, "image": (image, 0)}
    if masked:  # paint the object in the mask editor; an empty mask means "whole image"
        inputs["mask"] = (image, 1)
    features = w.add("EMMAImageFeatures", [kind, "center"], inputs, pos=(PROMPT_X, y), size=(320, 130))
    module = w.add("EMMALoadModule", [module_file], pos=(PROMPT_X, y + 210), size=(320, 60))
    inputs = {"module": (module, 0), "features": (features, 0)}
    if previous:
        inputs["conditions"] = previous
    condition = w.add("EMMACondition", [1.0, 0.0, 1.0], inputs, pos=(PROMPT_X + 360, y), size=(280, 150))
    return (condition, 0), [image, features, module, condition]


def assemble(w: UIWorkflow, n: dict, conditions, pos=(PROMPT_X, 460)) -> int:
    return w.add("EMMAAssemble", [False], {"positive": (n["positive"], 0), "negative": (n["negative"], 0),
                                          "conditions": conditions}, pos=pos, size=(300, 100))


def emma_workflow(title: str, what: str, text: str, conditions, models: list[str], references: str,
                  prefix: str, with_controlnet=False, clip_vision=True) -> dict:
    """ELLA text plus the conditions `conditions(w, n)` builds (-> (output, node ids)), assembled."""
    w = UIWorkflow()
    n = ella_text_nodes(w, text, clip_vision=clip_vision)
    output, reference_nodes = conditions(w, n)
    assembled = assemble(w, n, output)
    all_models = [SD15_CHECKPOINT, ELLA_FILE, T5_FOLDER, *([CLIP_VISION_H] if clip_vision else []), *models]
    more = [references, REFERENCE_HELP, CONDITION_HELP,
            "**EMMA Assemble** joins the conditions to the prompt; it needs no Apply node and works with "
            "any sampler, ControlNet and LoRA. CFG 7 to 8: lower it a little when a reference dominates."]
    if with_controlnet:
        all_models.append(CANNY_CONTROLNET)
        more.insert(0, f"**Control image**: ComfyUI's own `{CONTROL_IMAGE}` (its canny edges fix the layout).")
    w.note(title, note_text(what, all_models, *more))
    w.group("Models", n["models"])
    w.group("Prompt", [*n["prompt"], assembled])
    w.group("References", reference_nodes)
    positive, negative = (assembled, 0), (assembled, 1)
    if with_controlnet:
        positive, negative = controlnet(w, positive, negative, x=PROMPT_X + 700)  # right of the references
    sampler_tail(w, (n["ckpt"], 0), positive, negative, (n["ckpt"], 2), prefix)
    return w.to_json()


PORTRAIT = ("A close-up portrait photograph of a woman with short brown hair, smiling softly, wearing a denim "
            "jacket in a sunlit park in autumn. Warm golden light, shallow depth of field, sharp eyes, 85 mm lens.")
OBJECT_PROMPT = ("A photograph of a cup of coffee on a rustic wooden table by a rainy window in a small cafe. "
                 "A croissant on a plate beside it, soft daylight, shallow depth of field.")
STYLE_PROMPT = ("A lighthouse on a rocky cliff above the sea at night, waves breaking on the rocks, the sky full "
                "of stars and glowing clouds.")
PORTRAIT_WITH_OBJECT = ("A portrait photograph of a woman sitting at a wooden table in a small cafe, holding a cup "
                        "of coffee in both hands and smiling at the camera. Soft window light, shallow depth of "
                        "field.")
TWO_PEOPLE = ("A photograph of two women standing side by side in a bright library, both smiling at the camera. "
              "Bookshelves behind them, soft daylight from a tall window, sharp focus on both faces.")

FACE_WHAT = "the face reference gives the identity"
FACE_REFERENCE = (f"**Face reference**: `{FACE_IMAGE}`, a portrait with one clear face (the largest face is used; "
                  "`face_index` picks another). No face found is an error of the Face Features node.")
OBJECT_REFERENCE = (f"**Object reference**: `{OBJECT_IMAGE}`. Paint the object in Load Image's mask editor to "
                    "use only that part; an empty mask means the whole picture.")


def emma_text_face():
    return emma_workflow(
        "EMMA: text + face", "A portrait prompt through ELLA; the EMMA face module adds the identity of the face "
        "reference while the text keeps the clothes, place and light.", PORTRAIT,
        lambda w, n: face_condition(w, 0), [FACE_PACK, FACE_MODULE], FACE_REFERENCE, "EMMA/text_face",
        clip_vision=False)


def emma_text_object():
    return emma_workflow(
        "EMMA: text + object", "The text describes the scene; the EMMA object module brings the look of the "
        "object in the reference picture into it.", OBJECT_PROMPT,
        lambda w, n: image_condition(w, (n["vision"], 0), OBJECT_MODULE, "object / portrait", OBJECT_IMAGE, 0,
                                     masked=True), [OBJECT_MODULE], OBJECT_REFERENCE, "EMMA/text_object")


def emma_text_style():
    return emma_workflow(
        "EMMA: text + style", "The text says what to draw; the EMMA style module takes colours and texture from "
        "the style reference.", STYLE_PROMPT,
        lambda w, n: image_condition(w, (n["vision"], 0), STYLE_MODULE, "style", STYLE_IMAGE, 0,
                                     title="Style reference"), [STYLE_MODULE],
        f"**Style reference**: `{STYLE_IMAGE}` (any picture whose colours and texture you want).",
        "EMMA/text_style")


def _face_and_object(w, n):
    face, face_nodes = face_condition(w, 0)
    obj, object_nodes = image_condition(w, (n["vision"], 0), OBJECT_MODULE, "object / portrait", OBJECT_IMAGE, 1,
                                        previous=face, masked=True)
    return obj, face_nodes + object_nodes


FACE_OBJECT_WHAT = ("Two EMMA modules, trained apart, assembled into one prompt with no retraining: the face "
                    "module gives the identity, the object module the cup; the text the scene.")


def emma_text_face_object():
    return emma_workflow("EMMA: text + face + object", FACE_OBJECT_WHAT, PORTRAIT_WITH_OBJECT, _face_and_object,
                         [FACE_PACK, FACE_MODULE, OBJECT_MODULE], FACE_REFERENCE + "\n\n" + OBJECT_REFERENCE,
                         "EMMA/text_face_object")


def emma_assembled_controlnet():
    return emma_workflow("EMMA: face + object + ControlNet", FACE_OBJECT_WHAT + " A canny ControlNet fixes the "
                         "layout; it sees the same per-step context as the UNet.", PORTRAIT_WITH_OBJECT,
                         _face_and_object, [FACE_PACK, FACE_MODULE, OBJECT_MODULE],
                         FACE_REFERENCE + "\n\n" + OBJECT_REFERENCE, "EMMA/assembled_controlnet",
                         with_controlnet=True)


def emma_two_regions() -> dict:
    """Two people: the left half of the picture takes the first face, the right half the second, each through
    its own assembled prompt under a mask."""
    w = UIWorkflow()
    n = ella_text_nodes(w, TWO_PEOPLE)
    left, left_nodes = face_condition(w, 0, FACE_IMAGE, title="Face reference (left person)")
    right, right_nodes = face_condition(w, 1, SECOND_FACE_IMAGE, title="Face reference (right person)")
    regions, region_nodes = [], []
    x = PROMPT_X + 700  # right of the references' conditions
    for i, (conditions, x0) in enumerate(((left, 0), (right, 256))):
        y = REFERENCE_Y + i * REFERENCE_ROW
        assembled = assemble(w, n, conditions, pos=(x, y))
        region = w.add("ConditioningSetMask", [1.0, "default"], {"conditioning": (assembled, 0)},
                       pos=(x + 340, y), size=(260, 100), title=f"{('Left', 'Right')[i]} half")
        empty = w.add("SolidMask", [0.0, 512, 512], pos=(x, y + 170), size=(260, 106))
        half = w.add("SolidMask", [1.0, 256, 512], pos=(x + 300, y + 170), size=(260, 106))
        mask = w.add("MaskComposite", [x0, 0, "add"], {"destination": (empty, 0), "source": (half, 0)},
                     pos=(x + 600, y + 170), size=(260, 130))
        w.link(mask, 0, region, "mask")
        regions.append(region)
        region_nodes += [assembled, region, empty, half, mask]
    combined = w.add("ConditioningCombine", [], {"conditioning_1": (regions[0], 0), "conditioning_2": (regions[1], 0)},
                     pos=(x + 640, REFERENCE_Y), size=(240, 50))
    w.note("EMMA: two people, one face each", note_text(
        "Regional prompting: the same text, assembled twice with a different face module condition, each under "
        "a mask (left half, right half) and combined. Each person takes the identity of their own reference.",
        [SD15_CHECKPOINT, ELLA_FILE, T5_FOLDER, FACE_PACK, FACE_MODULE],
        f"**Face references**: `{FACE_IMAGE}` (left person) and `{SECOND_FACE_IMAGE}` (right person), one clear "
        "face each.", REFERENCE_HELP, CONDITION_HELP,
        "**Masks**: Solid Mask + Mask Composite draw each half; move the `x` of Mask Composite to move a region."))
    w.group("Models", n["models"])
    w.group("Prompt", n["prompt"])
    w.group("References", left_nodes + right_nodes)
    w.group("Regions", region_nodes + [combined])
    sampler_tail(w, (n["ckpt"], 0), (combined, 0), (n["negative"], 0), (n["ckpt"], 2), "EMMA/two_regions")
    return w.to_json()


def umm_subject() -> dict:
    """UMM-Diffusion: the subject image replaces the word 'cup' in CLIP's text space; w trades subject
    fidelity against the text."""
    w = UIWorkflow()
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(MODELS_X, 0), size=(320, 100))
    vision = w.add("CLIPVisionLoader", [CLIP_VISION_H], pos=(MODELS_X, 160), size=(320, 60))
    projector = w.add("UMMLoadProjector", [UMM_PROJECTOR], pos=(MODELS_X, 280), size=(320, 60))
    image = w.add("LoadImage", [OBJECT_IMAGE, "image"], pos=(MODELS_X, REFERENCE_Y), size=(320, 340),
                  title="Subject image")
    encoded = w.add("CLIPVisionEncode", ["center"], {"clip_vision": (vision, 0), "image": (image, 0)},
                    pos=(PROMPT_X, REFERENCE_Y), size=(300, 80))
    subject = w.add("UMMSubjectEncode", ["a photo of a cup on a wooden table by the sea at sunset", "cup"],
                    {"clip": (ckpt, 1), "clip_vision_output": (encoded, 0), "projector": (projector, 0)},
                    pos=(PROMPT_X, 0), size=(400, 220))
    negative = w.add("CLIPTextEncode", [""], {"clip": (ckpt, 1)}, pos=(PROMPT_X, 280), size=(400, 100),
                     title="Negative (empty)")
    guider = w.add("UMMGuider", [7.5, 0.5], {"model": (ckpt, 0), "h_u": (subject, 0), "h_y": (subject, 1),
                                            "negative": (negative, 0)}, pos=(SAMPLE_X, 0), size=(320, 130))
    noise = w.add("RandomNoise", [42, "fixed"], pos=(SAMPLE_X, 190), size=(320, 82))
    sampler = w.add("KSamplerSelect", ["euler"], pos=(SAMPLE_X, 330), size=(320, 58))
    sigmas = w.add("BasicScheduler", ["normal", 25, 1.0], {"model": (ckpt, 0)}, pos=(SAMPLE_X, 450), size=(320, 106))
    latent = w.add("EmptyLatentImage", [512, 512, 1], pos=(SAMPLE_X, 620), size=(320, 106))
    sampled = w.add("SamplerCustomAdvanced", [], {"noise": (noise, 0), "guider": (guider, 0),
                                                  "sampler": (sampler, 0), "sigmas": (sigmas, 0),
                                                  "latent_image": (latent, 0)}, pos=(OUT_X, 0), size=(300, 110))
    decoded = w.add("VAEDecode", [], {"samples": (sampled, 0), "vae": (ckpt, 2)}, pos=(OUT_X, 170), size=(220, 50))
    save = w.add("SaveImage", ["EMMA/umm_subject"], {"images": (decoded, 0)}, pos=(OUT_X, 280), size=(400, 450))
    w.note("UMM-Diffusion: a subject picture as a word", note_text(
        "The subject picture becomes a pseudo-word in CLIP's text space and replaces `subject_word` (here "
        "`cup`) in the prompt; the UMM Guider mixes the prompt with and without it.",
        [SD15_CHECKPOINT, CLIP_VISION_H, UMM_PROJECTOR],
        f"**Subject image**: `{OBJECT_IMAGE}` (shipped with the pack and copied into ComfyUI's `input` folder "
        "when it first loads; pick your own).",
        "**UMM Guider**: `s` is the guidance scale (as CFG, 7 to 8); `w` trades the subject's likeness (1) "
        "against the rest of the text (0)."))
    w.group("Models", [ckpt, vision, projector])
    w.group("Prompt", [subject, negative])
    w.group("References", [image, encoded])
    w.group("Sampling", [guider, noise, sampler, sigmas, latent, sampled, decoded, save])
    return w.to_json()


def emu_apply_lora() -> dict:
    w = UIWorkflow()
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(MODELS_X, 0), size=(320, 100))
    lora = w.add("LoraLoader", [EMU_LORA, 1.0, 1.0], {"model": (ckpt, 0), "clip": (ckpt, 1)},
                 pos=(MODELS_X, 160), size=(320, 130), title="Load LoRA (Emu quality-tuned)")
    positive = w.add("CLIPTextEncode", [POSITIVE], {"clip": (lora, 1)}, pos=(PROMPT_X, 0), size=(420, 200),
                     title="CLIP Text Encode (positive)")
    negative = w.add("CLIPTextEncode", [""], {"clip": (lora, 1)}, pos=(PROMPT_X, 260), size=(420, 100),
                     title="CLIP Text Encode (negative)")
    w.note("Emu: a quality-tuned LoRA", note_text(
        "The LoRA that Emu Quality-Tune made from your curated set, applied with the stock Load LoRA. Set its "
        "strength to 0 to compare with the base model at the same seed.", [SD15_CHECKPOINT, EMU_LORA]))
    w.group("Models", [ckpt, lora])
    w.group("Prompt", [positive, negative])
    sampler_tail(w, (lora, 0), (positive, 0), (negative, 0), (ckpt, 2), "EMMA/emu")
    return w.to_json()


def emu_curate_and_tune() -> dict:
    """Emu quality-tuning in two runs: curate (then edit the review list by hand), then tune. Quality-Tune and
    its preview start muted so that the first run only curates."""
    w = UIWorkflow()
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(MODELS_X, 0), size=(320, 100))
    curate = w.add("EmuCurateFolder", EMU_CURATE_WIDGETS, pos=(PROMPT_X, 0), size=(400, 330))
    sheet = w.add("PreviewImage", [], {"images": (curate, 1)}, pos=(PROMPT_X, 400), size=(400, 420),
                  title="Contact sheet (removed pictures framed red)")
    tune = w.add("EmuQualityTune", EMU_TUNE_WIDGETS, {"model": (ckpt, 0), "clip": (ckpt, 1), "vae": (ckpt, 2)},
                 pos=(SAMPLE_X, 0), size=(400, 430), mode=2)
    curve = w.add("PreviewImage", [], {"images": (tune, 1)}, pos=(SAMPLE_X + 440, 0), size=(400, 420),
                  title="Loss curve", mode=2)
    w.note("Emu: curate a small set, then quality-tune", note_text(
        "Emu's recipe: a few hundred to a few thousand very good pictures with captions, automatic filters, "
        "then your own eye, then a short fine-tune with early stopping. The result is a LoRA for the stock "
        "Load LoRA (see the `emu_apply_lora` workflow).", [SD15_CHECKPOINT],
        "**1. Curate**: set `folder` to your pictures (each with a same-name `.txt` caption) and run. The "
        "report lists what the filters removed; `emu_review.csv` in the folder holds a keep/reject line per "
        "picture: edit it by hand after looking at the contact sheet.",
        "**2. Tune**: select Emu Quality-Tune and Loss curve, press Ctrl+M to unmute them, set the same `folder` "
        "in Quality-Tune, and run again "
        f"(Curate is cached). It saves `models/loras/{EMU_LORA}` and shows the loss curve; it stops early when "
        "the validation loss stops improving (`patience`).",
        f"Details: [docs/emu.md]({DOCS_URL}emu.md)."))
    w.group("Models", [ckpt])
    w.group("Curate", [curate, sheet])
    w.group("Quality-tune", [tune, curve])
    return w.to_json()


def emma_train_first_module() -> dict:
    """A first EMMA module, end to end: the frozen models a user already has -> EMMA Train Module (object), its
    loss curve and preview pictures (docs/first-module.md)."""
    w = UIWorkflow()
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(MODELS_X, 0), size=(320, 100))
    ella = w.add("EMMALoadELLA", [ELLA_FILE], pos=(MODELS_X, 160), size=(320, 60))
    t5 = w.add("EMMALoadT5", [T5_FOLDER, "auto", False], pos=(MODELS_X, 280), size=(320, 82))
    vision = w.add("CLIPVisionLoader", [CLIP_VISION_H], pos=(MODELS_X, 420), size=(320, 60))
    train = w.add("EMMATrainModule", EMMA_TRAIN_WIDGETS,
                  {"model": (ckpt, 0), "vae": (ckpt, 2), "ella": (ella, 0), "t5": (t5, 0), "clip_vision": (vision, 0)},
                  pos=(PROMPT_X, 0), size=(420, 860))
    curve = w.add("PreviewImage", [], {"images": (train, 1)}, pos=(SAMPLE_X, 0), size=(400, 420), title="Loss curve")
    preview = w.add("PreviewImage", [], {"images": (train, 2)}, pos=(SAMPLE_X, 480), size=(400, 420),
                    title="Preview pictures (held-out references)")
    w.note("EMMA: train your first module", note_text(
        "No EMMA module has been released: this graph makes one. An **object** module learns to take what a "
        "reference picture shows (the object, its colour, its look) into the prompt while the text keeps the "
        "rest. Only the module trains; the checkpoint, ELLA, flan-T5 and CLIP vision stay frozen.",
        [SD15_CHECKPOINT, ELLA_FILE, T5_FOLDER, CLIP_VISION_H],
        "**The dataset**: set `dataset_path` to a folder of pictures, each with a same-name `.txt` caption "
        "(`0001.jpg` + `0001.txt`), any aspect ratio. A `0001_ref.png` beside a picture is its reference (for "
        "example the object cut out); without one the picture itself is the reference (augmented views keep the "
        "module from copying it). A few hundred pictures is a start.",
        f"**The run**: it writes `models/emma/{FIRST_MODULE}.safetensors` and keeps its checkpoints, log and "
        f"previews in `output/emma_training/{FIRST_MODULE}/`; run it again to resume. Watch the loss curve fall "
        "and the previews take on the references. Memory and time per step: "
        f"[docs/first-module.md]({DOCS_URL}first-module.md).",
        "**Then**: load the file with Load EMMA Module in the `emma_text_object` workflow."))
    w.group("Models", [ckpt, ella, t5, vision])
    w.group("Training", [train])
    w.group("Progress", [curve, preview])
    return w.to_json()


# The world of docs/world.md: models made by `python -m devtools.world build`, never downloaded.
WORLD_CHECKPOINT = "emma-world-sd15.safetensors"
WORLD_ELLA = "emma-world-ella.safetensors"
WORLD_T5 = "emma-world-flan-t5-standin.safetensors"
WORLD_OBJECT = "emma-world-object.safetensors"
WORLD_STYLE = "emma-world-style.safetensors"
WORLD_OBJECT_REFERENCE = "emma-world-object-reference.safetensors"
WORLD_STYLE_REFERENCE = "emma-world-style-reference.safetensors"
WORLD_PROMPT = "a circle"
WORLD_SEED = 20261129
BUILD_THE_WORLD = ("made by the world build, never downloaded: `scripts/world.sh` "
                   f"([docs/world.md]({DOCS_URL}world.md))")
for _name, _folder in ((WORLD_CHECKPOINT, "checkpoints"), (WORLD_ELLA, "ella"), (WORLD_T5, "text_encoders"),
                       (WORLD_OBJECT, "emma"), (WORLD_STYLE, "emma"), (WORLD_OBJECT_REFERENCE, "emma_features"),
                       (WORLD_STYLE_REFERENCE, "emma_features")):
    MODELS[_name] = ModelFile(_folder, BUILD_THE_WORLD)


def emma_world_assembled() -> dict:
    """The assembled row of the world's table as a graph: the text names the shape, an object module's
    reference (a red square) gives the colour, a style module's reference (a striped patch) the background."""
    w = UIWorkflow()
    ckpt = w.add("CheckpointLoaderSimple", [WORLD_CHECKPOINT], pos=(MODELS_X, 0), size=(320, 100))
    ella = w.add("EMMALoadELLA", [WORLD_ELLA], pos=(MODELS_X, 160), size=(320, 60))
    t5 = w.add("EMMALoadT5", [WORLD_T5, "auto", True], pos=(MODELS_X, 280), size=(320, 82))
    positive = w.add("EMMATextEncode", [WORLD_PROMPT, "flexible"], {"ella": (ella, 0), "t5": (t5, 0)},
                     pos=(PROMPT_X, 0), size=(360, 140), title="ELLA Text Encode (names only the shape)")
    negative = w.add("EMMATextEncode", ["", "flexible"], {"ella": (ella, 0), "t5": (t5, 0)},
                     pos=(PROMPT_X, 200), size=(360, 100), title="ELLA Text Encode (negative: empty)")
    conditions, reference_nodes = None, []
    for i, (module, reference, title) in enumerate(((WORLD_OBJECT, WORLD_OBJECT_REFERENCE, "object: the colour"),
                                                    (WORLD_STYLE, WORLD_STYLE_REFERENCE, "style: the background"))):
        y = REFERENCE_Y + i * 260
        loaded = w.add("EMMALoadModule", [module], pos=(MODELS_X, y), size=(320, 60))
        features = w.add("EMMALoadFeatures", [reference], pos=(MODELS_X, y + 120), size=(320, 60),
                         title=f"Load EMMA Features ({title})")
        inputs = {"module": (loaded, 0), "features": (features, 0)}
        if conditions is not None:
            inputs["conditions"] = conditions
        condition = w.add("EMMACondition", [1.0, 0.0, 1.0], inputs, pos=(PROMPT_X, y), size=(280, 150))
        conditions = (condition, 0)
        reference_nodes += [loaded, features, condition]
    assembled = w.add("EMMAAssemble", [False], {"positive": (positive, 0), "negative": (negative, 0),
                                               "conditions": conditions}, pos=(PROMPT_X, 380), size=(300, 100))
    from .world.build import SCHEDULES
    from .world.evaluate import Sampling  # the evaluation's settings: this graph is its assembled row

    size = SCHEDULES["full"].size  # the full world's pictures (the reduced world's demo sets its own)
    latent = w.add("EmptyLatentImage", [size, size, 1], pos=(SAMPLE_X, 0), size=(320, 110))

    sampling = Sampling()
    sampled = w.add("KSampler", [WORLD_SEED, "fixed", sampling.steps, sampling.cfg, sampling.sampler,
                                 sampling.scheduler, 1.0],
                    {"model": (ckpt, 0), "positive": (assembled, 0), "negative": (assembled, 1),
                     "latent_image": (latent, 0)}, pos=(SAMPLE_X, 170), size=(320, 270))
    image = w.add("VAEDecode", [], {"samples": (sampled, 0), "vae": (ckpt, 2)}, pos=(OUT_X, 0), size=(220, 50))
    save = w.add("SaveImage", ["EMMA/world"], {"images": (image, 0)}, pos=(OUT_X, 110), size=(300, 300))
    w.note("The world: EMMA you can measure", note_text(
        "Pictures of one coloured shape on a grey patterned ground, small enough to train on a CPU. The text "
        "names only the shape; the object module takes the colour from its reference (a red square: the "
        "text still decides the shape), the style module takes the background from a patch of stripes. The "
        "two modules were trained apart and are assembled here. The references are saved features (Load EMMA "
        "Features), not pictures.",
        [WORLD_CHECKPOINT, WORLD_ELLA, WORLD_T5, WORLD_OBJECT, WORLD_STYLE, WORLD_OBJECT_REFERENCE,
         WORLD_STYLE_REFERENCE], CONDITION_HELP,
        f"CFG {sampling.cfg:g}, {sampling.steps} steps and {size} px are the world evaluation's own settings."))
    w.group("Models", [ckpt, ella, t5])
    w.group("Prompt", [positive, negative, assembled])
    w.group("References", reference_nodes)
    w.group("Sampling", [latent, sampled, image, save])
    return w.to_json()


# Workflows that need the world's own trained models (docs/world.md; no stand-in has their shapes): the
# browser test loads them, tests/devtools/world/test_world_ci.py runs them on the server.
WORLD_WORKFLOWS = {"emma_world_assembled.json"}
# Workflows that train rather than draw: tests/test_workflows.py runs them on a generated folder.
TRAINING_WORKFLOWS = {"emu_curate_and_tune.json", "emma_train_first_module.json"}

WORKFLOWS = {
    "ella_text_to_image.json": ella_text_to_image,
    "ella_controlnet.json": ella_controlnet,
    "emma_text_face.json": emma_text_face,
    "emma_text_object.json": emma_text_object,
    "emma_text_style.json": emma_text_style,
    "emma_text_face_object.json": emma_text_face_object,
    "emma_assembled_controlnet.json": emma_assembled_controlnet,
    "emma_two_regions.json": emma_two_regions,
    "umm_subject.json": umm_subject,
    "emu_apply_lora.json": emu_apply_lora,
    "emu_curate_and_tune.json": emu_curate_and_tune,
    "emma_train_first_module.json": emma_train_first_module,
    "emma_world_assembled.json": emma_world_assembled,
}


def main() -> int:
    from .thumbnails import write_thumbnails

    WORKFLOWS_DIR.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        workflow = build()
        workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-emma/workflows/" + name))  # stable ids
        (WORKFLOWS_DIR / name).write_text(json.dumps(workflow, indent=1) + "\n")
        print(WORKFLOWS_DIR / name)
    write_thumbnails(WORKFLOWS_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
