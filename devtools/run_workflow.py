"""Turn a shared UI workflow into a runnable API graph: real model files where the host has them,
generated stand-ins (named as such) where it does not."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import standins as standin_files
from .workflow_api import load_ui_workflow, ui_to_api

# (node type, input) -> the stand-in file that replaces a missing real model
def standin_for() -> dict[tuple[str, str], str]:
    names = standin_files.standin_names()
    return {
        ("CheckpointLoaderSimple", "ckpt_name"): names["checkpoints"],
        ("EMMALoadELLA", "ella_name"): names["ella"],
        ("EMMALoadT5", "t5_name"): names["text_encoders"],
        ("ControlNetLoader", "control_net_name"): names["controlnet"],
    }


@dataclass
class PreparedGraph:
    graph: dict
    standins_used: list[str] = field(default_factory=list)  # "node type.input: real -> stand-in"


def _options(object_info: dict, class_type: str, name: str) -> list:
    info = object_info[class_type]["input"]
    spec = info.get("required", {}).get(name) or info.get("optional", {}).get(name)
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options", []) if len(spec) > 1 else []


def prepare(ui_path: Path, object_info: dict, *, small: bool | None = None, steps: int | None = None) -> PreparedGraph:
    """API graph for `ui_path`; `small` (default: whenever a stand-in is used) shrinks the image to 64 px
    and the steps to 3 so a CPU run takes seconds."""
    graph = ui_to_api(load_ui_workflow(ui_path), object_info)
    used = []
    for (class_type, name), standin in standin_for().items():
        for node in graph.values():
            if node["class_type"] != class_type:
                continue
            wanted = node["inputs"][name]
            if wanted not in _options(object_info, class_type, name):
                node["inputs"][name] = standin
                used.append(f"{class_type}.{name}: {wanted} -> {standin} (generated stand-in, random weights)")
    if small is None:
        small = bool(used)
    for node in graph.values():
        if small and node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler" and (small or steps):
            node["inputs"]["steps"] = steps or 3
    return PreparedGraph(graph, used)
