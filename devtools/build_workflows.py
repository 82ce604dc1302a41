"""Writes the example workflows in workflows/ in the UI format the ComfyUI frontend saves and users share.

The JSON files are the product; this script is how they are kept consistent (ids, links, slots). Run
`python -m devtools.build_workflows` after changing a node's inputs, then load them in the browser.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"

# The real file names users place (README's model table); tests swap in generated stand-ins.
SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
ELLA_FILE = "ella-sd1.5-tsc-t5xl.safetensors"
T5_FOLDER = "flan-t5-xl/"
CANNY_CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
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
}


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
        if models:
            node["properties"]["models"] = models
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
        return {"id": None, "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def ella_text_nodes(w: UIWorkflow, y=0):
    """Checkpoint, connector, T5, positive and negative prompts, and the model patched per step."""
    ckpt = w.add("CheckpointLoaderSimple", [SD15_CHECKPOINT], pos=(0, y), size=(320, 100),
                 models=[{"name": SD15_CHECKPOINT, "directory": "checkpoints"}])
    ella = w.add("EMMALoadELLA", [ELLA_FILE], pos=(0, y + 150), size=(320, 60),
                 models=[{"name": ELLA_FILE, "directory": "ella"}])
    t5 = w.add("EMMALoadT5", [T5_FOLDER, "auto"], pos=(0, y + 260), size=(320, 80))
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
                   ".safetensors). 'Apply ELLA/EMMA to Model' makes the connector follow the true timestep "
                   "of every sampler step. Long descriptive prompts work best."], pos=(0, 620), size=(420, 160))
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


WORKFLOWS = {"ella_text_to_image.json": ella_text_to_image, "ella_controlnet.json": ella_controlnet}


def main() -> int:
    WORKFLOWS_DIR.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        (WORKFLOWS_DIR / name).write_text(json.dumps(build(), indent=1) + "\n")
        print(WORKFLOWS_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
