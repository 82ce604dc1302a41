"""Turn a shared UI workflow into a runnable API graph: real model files where the host has them,
generated stand-ins (named as such) where it does not."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import standins as standin_files
from .workflow_api import load_ui_workflow, ui_to_api

EXAMPLE_PICTURES = Path(__file__).resolve().parents[1] / "workflows" / "input"

# (node type, input) -> the stand-in file that replaces a missing real model (a function of the real name)
def standin_for() -> dict[tuple[str, str], object]:
    names = standin_files.standin_names()
    modules = names["emma"]

    def module_for(real: str) -> str:
        for modality in ("face", "style", "object"):
            if modality in real.lower():
                return modules[modality]
        return modules["object"]

    return {
        ("CheckpointLoaderSimple", "ckpt_name"): names["checkpoints"],
        ("EMMALoadELLA", "ella_name"): names["ella"],
        ("EMMALoadT5", "t5_name"): names["text_encoders"],
        ("ControlNetLoader", "control_net_name"): names["controlnet"],
        ("CLIPVisionLoader", "clip_name"): names["clip_vision"],
        ("EMMALoadModule", "module_name"): module_for,
        ("UMMLoadProjector", "projector_name"): names["umm"],
        ("LoraLoader", "lora_name"): names["loras"],
    }


def ensure_input_images(input_dir: Path, comfy_dir: Path) -> None:
    """The pictures the shipped workflows name: ComfyUI's own example.png (copied from its tree, as a user's
    ComfyUI has it in input/), and the pack's references, which the pack itself copies into the input folder
    when ComfyUI loads it (nodes/example_inputs.py): their absence is that step failing, not set-up to do."""
    import shutil

    input_dir = Path(input_dir)
    if not (input_dir / "example.png").exists():
        shutil.copyfile(Path(comfy_dir) / "input" / "example.png", input_dir / "example.png")
    missing = [p.name for p in EXAMPLE_PICTURES.iterdir() if p.suffix != ".md" and not (input_dir / p.name).exists()]
    if missing:
        raise FileNotFoundError(f"the pack did not copy its example pictures {missing} into {input_dir} when "
                                "ComfyUI loaded it (nodes/example_inputs.py)")


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
                replacement = standin(wanted) if callable(standin) else standin
                node["inputs"][name] = replacement
                used.append(f"{class_type}.{name}: {wanted} -> {replacement} (generated stand-in, random weights)")
    if small is None:
        small = bool(used)
    for node in graph.values():
        if small and node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] in ("KSampler", "BasicScheduler") and (small or steps):
            node["inputs"]["steps"] = steps or 3
    return PreparedGraph(graph, used)


def run_with_file(server, workflow: Path, class_type: str, input_name: str, file_name: str,
                  timeout: float = 900) -> list[Path]:
    """Run a shipped workflow on `server` with one loader pointed at a file just written into its models
    (a freshly trained module, projector or LoRA); stand-ins elsewhere. Returns the saved images."""
    prepared = prepare(Path(workflow), server.object_info(refresh=True))
    (loader,) = [n for n in prepared.graph.values() if n["class_type"] == class_type]
    loader["inputs"][input_name] = file_name
    ensure_input_images(server.input_dir, server.comfy_dir)
    return server.output_images(server.run(prepared.graph, timeout=timeout))
