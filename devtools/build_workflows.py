"""Writes the example workflows in workflows/ in the UI format the ComfyUI frontend saves and users share.

The JSON files are the product; this script is how they are kept consistent (ids, links, slots). Run
`python -m devtools.build_workflows` after changing a node's inputs, then load them in the browser.
"""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"

# The real file names users place (README's model table); tests swap in generated stand-ins.
SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
ELLA_FILE = "ella-sd1.5-tsc-t5xl.safetensors"
T5_FOLDER = "flan-t5-xl/"
CANNY_CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
MODEL_URLS = {  # the same downloads as [[tool.comfy.Models]] in pyproject.toml
    SD15_CHECKPOINT: "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                     "v1-5-pruned-emaonly-fp16.safetensors",
    ELLA_FILE: "https://huggingface.co/QQGYLab/ELLA/resolve/main/ella-sd1.5-tsc-t5xl.safetensors",
    CANNY_CONTROLNET: "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                      "control_v11p_sd15_canny_fp16.safetensors",
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors":
        "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",
}
POSITIVE = ("A photograph of a red vintage bicycle leaning against a weathered blue wooden door. "
            "Morning sunlight casts long shadows across the cobblestone street, and a small potted "
            "plant with white flowers sits on the doorstep. Shallow depth of field, warm tones.")

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

# EMMA modules: no one has released any; train them with the pack's trainer (README) under these names.
FACE_MODULE = "emma-face.safetensors"
OBJECT_MODULE = "emma-object.safetensors"
STYLE_MODULE = "emma-style.safetensors"
CLIP_VISION_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
FACE_IMAGE = "emma_face.png"
OBJECT_IMAGE = "example.png"
STYLE_IMAGE = "example.png"
UMM_PROJECTOR = "umm-projector-sd15-vit-h.safetensors"
EMU_LORA = "emu-quality-tuned.safetensors"  # what 'Emu Quality-Tune' / scripts/emu_tune.py save into models/loras


class UIWorkflow:
    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, type_: str, widgets: list, inputs: dict | None = None, pos=(0, 0), size=(320, 120),
            title: str | None = None, models: list | None = None) -> int:
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
            "order": node_id - 1, "mode": 0, "inputs": [],
            "outputs": [{"name": n, "type": t, "slot_index": i, "links": []}
                        for i, (n, t) in enumerate(OUTPUTS[type_])],
            "properties": {"Node name for S&R": type_}, "widgets_values": widgets,
        }
        if title:
            node["title"] = title
        # The frontend's schema wants a download url per listed model; files with no single download (the
        # T5 folder, trained EMMA/UMM/Emu files) are named in the Note and the README instead.
        downloadable = [dict(m, url=MODEL_URLS[m["name"]]) for m in models or [] if m["name"] in MODEL_URLS]
        if downloadable:
            node["properties"]["models"] = downloadable
        self.nodes.append(node)
        for slot, (name, (source, source_slot)) in enumerate((inputs or {}).items()):
            src = self.nodes[source - 1]
            link_id = len(self.links) + 1
            link_type = src["outputs"][source_slot]["type"]
            self.links.append([link_id, source, source_slot, node_id, slot, link_type])
            src["outputs"][source_slot]["links"].append(link_id)
            node["inputs"].append({"name": name, "type": link_type, "link": link_id})
        return node_id

    def to_json(self) -> dict:
        return {"id": "", "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def ella_text_nodes(w: UIWorkflow, y=0):
    """Checkpoint, connector, T5, positive and negative prompts, and the model patched per step."""
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(0, y), size=(320, 100),
                 models=[{"name": SD15_CHECKPOINT, "directory": "checkpoints"}])
    ella = w.add("EMMALoadELLA", [ELLA_FILE], pos=(0, y + 150), size=(320, 60),
                 models=[{"name": ELLA_FILE, "directory": "ella"}])
    t5 = w.add("EMMALoadT5", [T5_FOLDER, "auto", False], pos=(0, y + 260), size=(320, 80))
    positive = w.add("EMMATextEncode", [POSITIVE, "flexible"], {"ella": (ella, 0), "t5": (t5, 0)},
                     pos=(380, y), size=(420, 220), title="ELLA Text Encode (positive)")
    negative = w.add("EMMATextEncode", ["", "flexible"], {"ella": (ella, 0), "t5": (t5, 0)},
                     pos=(380, y + 270), size=(420, 140), title="ELLA Text Encode (negative: empty, as ELLA)")
    model = w.add("EMMAApplyToModel", [], {"model": (ckpt, 0)}, pos=(380, y + 460), size=(300, 50))
    return dict(ckpt=ckpt, ella=ella, t5=t5, positive=positive, negative=negative, model=model)


def sampler_tail(w: UIWorkflow, model, positive, negative, vae, x=860, prefix="EMMA/ella"):
    latent = w.add("EmptyLatentImage", [512, 512, 1], pos=(x, 420), size=(300, 110))
    sampled = w.add("KSampler", [42, "fixed", 25, 10.0, "dpmpp_2m", "karras", 1.0],
                    {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)},
                    pos=(x, 0), size=(320, 300))
    image = w.add("VAEDecode", [], {"samples": (sampled, 0), "vae": vae}, pos=(x + 360, 0), size=(220, 50))
    w.add("SaveImage", [prefix], {"images": (image, 0)}, pos=(x + 360, 100), size=(400, 450))


def ella_text_to_image() -> dict:
    w = UIWorkflow()
    n = ella_text_nodes(w)
    w.add("Note", ["ELLA text-to-image. Models: checkpoints/" + SD15_CHECKPOINT + ", ella/" + ELLA_FILE +
                   ", text_encoders/" + T5_FOLDER + " (Hugging Face folder of google/flan-t5-xl, or one "
                   ".safetensors). 'Apply ELLA/EMMA to Model' is optional (ELLA conditioning follows the "
                   "true timestep of every sampler step by itself). Long descriptive prompts work best."], pos=(0, 620), size=(420, 160))
    sampler_tail(w, (n["model"], 0), (n["positive"], 0), (n["negative"], 0), (n["ckpt"], 2))
    return w.to_json()


def ella_controlnet() -> dict:
    w = UIWorkflow()
    n = ella_text_nodes(w)
    image = w.add("LoadImage", ["example.png", "image"], pos=(0, 620), size=(320, 320))
    edges = w.add("Canny", [0.4, 0.8], {"image": (image, 0)}, pos=(380, 620), size=(300, 90))
    control = w.add("ControlNetLoader", [CANNY_CONTROLNET], pos=(380, 760), size=(320, 60),
                    models=[{"name": CANNY_CONTROLNET, "directory": "controlnet"}])
    applied = w.add("ControlNetApplyAdvanced", [0.8, 0.0, 1.0],
                    {"positive": (n["positive"], 0), "negative": (n["negative"], 0),
                     "control_net": (control, 0), "image": (edges, 0), "vae": (n["ckpt"], 2)},
                    pos=(860, 620), size=(320, 190))
    sampler_tail(w, (n["model"], 0), (applied, 0), (applied, 1), (n["ckpt"], 2), x=1240,
                 prefix="EMMA/ella_controlnet")
    return w.to_json()


def face_condition(w: UIWorkflow, previous=None, y=900, x=0, weight=1.0):
    module = w.add("EMMALoadModule", [FACE_MODULE], pos=(x, y), size=(320, 60),
                   models=[{"name": FACE_MODULE, "directory": "emma"}])
    image = w.add("LoadImage", [FACE_IMAGE, "image"], pos=(x, y + 100), size=(320, 320), title="Face reference")
    face = w.add("EMMAFaceFeatures", ["antelopev2", -1, 640, "auto"], {"image": (image, 0)},
                 pos=(x + 360, y + 100), size=(320, 150))
    inputs = {"module": (module, 0), "features": (face, 0)}
    if previous:
        inputs["conditions"] = previous
    return (w.add("EMMACondition", [weight, 0.0, 1.0], inputs, pos=(x + 720, y), size=(300, 150)), 0)


def clip_vision(w: UIWorkflow, y=900, x=0):
    return (w.add("CLIPVisionLoader", [CLIP_VISION_H], pos=(x, y), size=(320, 60),
                  models=[{"name": CLIP_VISION_H, "directory": "clip_vision"}]), 0)


def image_condition(w: UIWorkflow, vision, module_file, kind, image_name, previous=None, y=1400, x=0,
                    masked=False, weight=1.0, title="Object reference"):
    module = w.add("EMMALoadModule", [module_file], pos=(x, y), size=(320, 60),
                   models=[{"name": module_file, "directory": "emma"}])
    image = w.add("LoadImage", [image_name, "image"], pos=(x, y + 100), size=(320, 320), title=title)
    inputs = {"clip_vision": vision, "image": (image, 0)}
    if masked:  # paint the object in the mask editor; an empty mask means "whole image"
        inputs["mask"] = (image, 1)
    features = w.add("EMMAImageFeatures", [kind, "center"], inputs, pos=(x + 360, y + 100), size=(320, 120))
    inputs = {"module": (module, 0), "features": (features, 0)}
    if previous:
        inputs["conditions"] = previous
    return (w.add("EMMACondition", [weight, 0.0, 1.0], inputs, pos=(x + 720, y), size=(300, 150)), 0)


def assembled(w: UIWorkflow, n, conditions, x=1100, y=0):
    node = w.add("EMMAAssemble", [False], {"positive": (n["positive"], 0), "negative": (n["negative"], 0),
                                         "conditions": conditions}, pos=(x, y), size=(300, 100))
    return (node, 0), (node, 1)


def emma_workflow(build_conditions, prefix, controlnet=False) -> dict:
    w = UIWorkflow()
    n = ella_text_nodes(w)
    conditions = build_conditions(w)
    positive, negative = assembled(w, n, conditions, x=1100)
    if controlnet:
        image = w.add("LoadImage", ["example.png", "image"], pos=(1100, 300), size=(320, 320), title="Control image")
        edges = w.add("Canny", [0.4, 0.8], {"image": (image, 0)}, pos=(1100, 660), size=(300, 90))
        control = w.add("ControlNetLoader", [CANNY_CONTROLNET], pos=(1100, 800), size=(320, 60),
                        models=[{"name": CANNY_CONTROLNET, "directory": "controlnet"}])
        applied = w.add("ControlNetApplyAdvanced", [0.8, 0.0, 1.0],
                        {"positive": positive, "negative": negative, "control_net": (control, 0),
                         "image": (edges, 0), "vae": (n["ckpt"], 2)}, pos=(1460, 300), size=(320, 190))
        positive, negative = (applied, 0), (applied, 1)
    sampler_tail(w, (n["model"], 0), positive, negative, (n["ckpt"], 2), x=1900, prefix=prefix)
    return w.to_json()


def emma_text_face():
    return emma_workflow(lambda w: face_condition(w), "EMMA/text_face")


def emma_text_object():
    return emma_workflow(lambda w: image_condition(w, clip_vision(w), OBJECT_MODULE, "object / portrait",
                                                   OBJECT_IMAGE, masked=True), "EMMA/text_object")


def emma_text_style():
    return emma_workflow(lambda w: image_condition(w, clip_vision(w), STYLE_MODULE, "style", STYLE_IMAGE,
                                                   title="Style reference"), "EMMA/text_style")


def _face_and_object(w):
    face = face_condition(w)
    return image_condition(w, clip_vision(w, y=1400), OBJECT_MODULE, "object / portrait", OBJECT_IMAGE,
                           previous=face, y=1500, masked=True)


def emma_text_face_object():
    return emma_workflow(_face_and_object, "EMMA/text_face_object")


def emma_assembled_controlnet():
    return emma_workflow(_face_and_object, "EMMA/assembled_controlnet", controlnet=True)


def emma_two_regions() -> dict:
    """Left half: the face reference; right half: the object reference; each its own assembled prompt."""
    w = UIWorkflow()
    n = ella_text_nodes(w)
    face = face_condition(w)
    obj = image_condition(w, clip_vision(w, y=1400), OBJECT_MODULE, "object / portrait", OBJECT_IMAGE, y=1500)
    regions = []
    for i, (conditions, x0) in enumerate(((face, 0), (obj, 256))):
        positive, _ = assembled(w, n, conditions, x=1100, y=i * 500)
        empty = w.add("SolidMask", [0.0, 512, 512], pos=(1100, 150 + i * 500), size=(260, 100))
        half = w.add("SolidMask", [1.0, 256, 512], pos=(1100, 280 + i * 500), size=(260, 100))
        mask = w.add("MaskComposite", [x0, 0, "add"], {"destination": (empty, 0), "source": (half, 0)},
                     pos=(1400, 150 + i * 500), size=(260, 130))
        regions.append(w.add("ConditioningSetMask", [1.0, "default"],
                             {"conditioning": positive, "mask": (mask, 0)}, pos=(1700, i * 500), size=(300, 100)))
    combined = w.add("ConditioningCombine", [], {"conditioning_1": (regions[0], 0), "conditioning_2": (regions[1], 0)},
                     pos=(2000, 0), size=(260, 50))
    sampler_tail(w, (n["model"], 0), (combined, 0), (n["negative"], 0), (n["ckpt"], 2), x=2300,
                 prefix="EMMA/two_regions")
    return w.to_json()


def umm_subject() -> dict:
    """UMM-Diffusion: the subject image replaces the word 'dog' in CLIP's text space; w trades subject
    fidelity against the text."""
    w = UIWorkflow()
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(0, 0), size=(320, 100),
                 models=[{"name": SD15_CHECKPOINT, "directory": "checkpoints"}])
    vision = w.add("CLIPVisionLoader", [CLIP_VISION_H], pos=(0, 150), size=(320, 60),
                   models=[{"name": CLIP_VISION_H, "directory": "clip_vision"}])
    image = w.add("LoadImage", [OBJECT_IMAGE, "image"], pos=(0, 260), size=(320, 320), title="Subject image")
    encoded = w.add("CLIPVisionEncode", ["center"], {"clip_vision": (vision, 0), "image": (image, 0)},
                    pos=(360, 260), size=(260, 80))
    projector = w.add("UMMLoadProjector", [UMM_PROJECTOR], pos=(360, 150), size=(320, 60),
                      models=[{"name": UMM_PROJECTOR, "directory": "umm"}])
    subject = w.add("UMMSubjectEncode", ["a photo of a dog playing on the beach at sunset", "dog"],
                    {"clip": (ckpt, 1), "clip_vision_output": (encoded, 0), "projector": (projector, 0)},
                    pos=(700, 0), size=(380, 220))
    negative = w.add("CLIPTextEncode", [""], {"clip": (ckpt, 1)}, pos=(700, 260), size=(380, 120),
                     title="Negative (empty)")
    guider = w.add("UMMGuider", [7.5, 0.5], {"model": (ckpt, 0), "h_u": (subject, 0), "h_y": (subject, 1),
                                            "negative": (negative, 0)}, pos=(1120, 0), size=(300, 170))
    noise = w.add("RandomNoise", [42, "fixed"], pos=(1120, 220), size=(300, 80))
    sampler = w.add("KSamplerSelect", ["euler"], pos=(1120, 340), size=(300, 60))
    sigmas = w.add("BasicScheduler", ["normal", 25, 1.0], {"model": (ckpt, 0)}, pos=(1120, 440), size=(300, 110))
    latent = w.add("EmptyLatentImage", [512, 512, 1], pos=(1120, 600), size=(300, 110))
    sampled = w.add("SamplerCustomAdvanced", [], {"noise": (noise, 0), "guider": (guider, 0),
                                                  "sampler": (sampler, 0), "sigmas": (sigmas, 0),
                                                  "latent_image": (latent, 0)}, pos=(1460, 0), size=(300, 120))
    decoded = w.add("VAEDecode", [], {"samples": (sampled, 0), "vae": (ckpt, 2)}, pos=(1800, 0), size=(220, 50))
    w.add("SaveImage", ["EMMA/umm_subject"], {"images": (decoded, 0)}, pos=(1800, 100), size=(400, 450))
    return w.to_json()


def emu_apply_lora() -> dict:
    w = UIWorkflow()
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(0, 0), size=(320, 100),
                 models=[{"name": SD15_CHECKPOINT, "directory": "checkpoints"}])
    lora = w.add("LoraLoader", [EMU_LORA, 1.0, 1.0], {"model": (ckpt, 0), "clip": (ckpt, 1)}, pos=(0, 150),
                 size=(320, 130), title="Load LoRA (Emu quality-tuned)",
                 models=[{"name": EMU_LORA, "directory": "loras"}])
    positive = w.add("CLIPTextEncode", [POSITIVE], {"clip": (lora, 1)}, pos=(380, 0), size=(420, 200),
                     title="CLIP Text Encode (positive)")
    negative = w.add("CLIPTextEncode", [""], {"clip": (lora, 1)}, pos=(380, 250), size=(420, 120),
                     title="CLIP Text Encode (negative)")
    latent = w.add("EmptyLatentImage", [512, 512, 1], pos=(860, 420), size=(300, 110))
    sampled = w.add("KSampler", [42, "fixed", 25, 7.0, "dpmpp_2m", "karras", 1.0],
                    {"model": (lora, 0), "positive": (positive, 0), "negative": (negative, 0),
                     "latent_image": (latent, 0)}, pos=(860, 0), size=(320, 300))
    image = w.add("VAEDecode", [], {"samples": (sampled, 0), "vae": (ckpt, 2)}, pos=(1220, 0), size=(220, 50))
    w.add("SaveImage", ["EMMA/emu"], {"images": (image, 0)}, pos=(1220, 100), size=(400, 450))
    w.add("Note", ["Emu quality-tuning: curate a folder with 'Emu Curate Folder' (edit the review list it writes), "
                   "tune with 'Emu Quality-Tune' (or scripts/emu_tune.py), which saves loras/" + EMU_LORA + ". "
                   "Set the LoRA strength to 0 to compare with the base model (same seed)."],
          pos=(0, 330), size=(320, 160))
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


def emma_world_assembled() -> dict:
    """The assembled row of the world's table as a graph: the text names the shape, an object module's
    reference (a red square) gives the colour, a style module's reference (a striped patch) the background.
    No Apply ELLA/EMMA to Model: ELLA conditioning carries its per-step wrappers itself."""
    w = UIWorkflow()
    ckpt = w.add("CheckpointLoaderSimple", [WORLD_CHECKPOINT], pos=(0, 0), size=(320, 100))
    ella = w.add("EMMALoadELLA", [WORLD_ELLA], pos=(0, 150), size=(320, 60))
    t5 = w.add("EMMALoadT5", [WORLD_T5, "auto", True], pos=(0, 260), size=(320, 80))
    positive = w.add("EMMATextEncode", [WORLD_PROMPT, "flexible"], {"ella": (ella, 0), "t5": (t5, 0)},
                     pos=(380, 0), size=(360, 140), title="ELLA Text Encode (names only the shape)")
    negative = w.add("EMMATextEncode", ["", "flexible"], {"ella": (ella, 0), "t5": (t5, 0)},
                     pos=(380, 190), size=(360, 120), title="ELLA Text Encode (negative: empty)")
    conditions = None
    for i, (module, reference, title) in enumerate(((WORLD_OBJECT, WORLD_OBJECT_REFERENCE, "object: the colour"),
                                                    (WORLD_STYLE, WORLD_STYLE_REFERENCE, "style: the background"))):
        y = 400 + i * 260
        loaded = w.add("EMMALoadModule", [module], pos=(0, y), size=(320, 60))
        features = w.add("EMMALoadFeatures", [reference], pos=(0, y + 100), size=(320, 60),
                         title=f"Load EMMA Features ({title})")
        inputs = {"module": (loaded, 0), "features": (features, 0)}
        if conditions is not None:
            inputs["conditions"] = conditions
        conditions = (w.add("EMMACondition", [1.0, 0.0, 1.0], inputs, pos=(380, y), size=(300, 150)), 0)
    assembled = w.add("EMMAAssemble", [False], {"positive": (positive, 0), "negative": (negative, 0),
                                               "conditions": conditions}, pos=(780, 0), size=(300, 100))
    latent = w.add("EmptyLatentImage", [64, 64, 1], pos=(780, 420), size=(300, 110))
    from .world.evaluate import Sampling  # the evaluation's settings: this graph is its assembled row

    sampling = Sampling()
    sampled = w.add("KSampler", [WORLD_SEED, "fixed", sampling.steps, sampling.cfg, sampling.sampler,
                                 sampling.scheduler, 1.0],
                    {"model": (ckpt, 0), "positive": (assembled, 0), "negative": (assembled, 1),
                     "latent_image": (latent, 0)}, pos=(1120, 0), size=(320, 300))
    image = w.add("VAEDecode", [], {"samples": (sampled, 0), "vae": (ckpt, 2)}, pos=(1480, 0), size=(220, 50))
    w.add("SaveImage", ["EMMA/world"], {"images": (image, 0)}, pos=(1480, 100), size=(300, 300))
    w.add("Note", ["The world of docs/world.md, where EMMA can be measured: pictures of one coloured shape on a grey "
                   "patterned ground. The text names only the shape; the object module takes the colour from its "
                   "reference (a red square: the text still decides the shape), the style module takes the "
                   "background from a patch of stripes; the two modules were trained apart and are assembled here. "
                   "Build the models with `python -m devtools.world build` (they are made, never downloaded)."],
          pos=(780, 600), size=(420, 200))
    return w.to_json()


# Workflows that need the world's own trained models (docs/world.md; no stand-in has their shapes): the
# browser test loads them, tests/devtools/world/test_world_ci.py runs them on the server.
WORLD_WORKFLOWS = {"emma_world_assembled.json"}

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
