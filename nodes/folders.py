"""Model folders of the pack, added to ComfyUI's registry without overwriting what a user configured."""
from __future__ import annotations

import os

import folder_paths

from ..emma_core.face import FaceError, cached_analyzer
from .errors import NodeError, node_error

SAFETENSORS = {".safetensors"}
SHOWN = 8  # file names a missing-file error lists
# folder name -> default location under ComfyUI's models dir
PACK_FOLDERS = {"ella": "ella", "emma": "emma", "emma_features": "emma_features", "insightface": "insightface",
                "umm": "umm"}


def register_folders() -> None:
    for name, sub in PACK_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, sub)
        if name in folder_paths.folder_names_and_paths:
            # extra_model_paths.yaml is applied before packs import: keep its paths, add ours after them
            paths, extensions = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, extensions or SAFETENSORS)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], SAFETENSORS)


def safetensors_files(folder: str) -> list[str]:
    return [n for n in folder_paths.get_filename_list(folder) if n.lower().endswith(".safetensors")]


def insightface_root() -> str:
    return folder_paths.get_folder_paths("insightface")[0]


def insightface_packs() -> list[str]:
    """The face-analysis packs in models/insightface/models/<pack>; the two stock names when there are none."""
    models = os.path.join(insightface_root(), "models")
    found = sorted(d for d in os.listdir(models) if os.path.isdir(os.path.join(models, d))) \
        if os.path.isdir(models) else []
    return found or ["antelopev2", "buffalo_l"]


def t5_choices() -> list[str]:
    """Single .safetensors files in text_encoders, plus Hugging Face folders shown as 'name/'."""
    folders = []
    for root in folder_paths.get_folder_paths("text_encoders"):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if os.path.isfile(os.path.join(path, "config.json")) and any(
                f.endswith(".safetensors") for f in os.listdir(path)
            ):
                folders.append(entry + "/")
    files = [n for n in safetensors_files("text_encoders") if not n.replace(os.sep, "/").startswith(tuple(folders))]
    return folders + files


def resolve_t5(node, name: str) -> str:
    """Full path of a choice from t5_choices() (the input t5_name), else `node`'s error (see resolve). A folder
    that is there but cannot be loaded (no config.json, no weights) is returned: the loader says what it lacks."""
    if not name.endswith("/"):
        return resolve(node, "t5_name", "text_encoders", name, t5_choices())
    entry = name[:-1]
    if _inside(entry) and "/" not in entry and "\\" not in entry:
        for root in folder_paths.get_folder_paths("text_encoders"):
            path = os.path.join(root, entry)
            if os.path.isdir(path):
                return path
    raise missing(node, "t5_name", "text_encoders", name, t5_choices())


def resolve(node, input_name: str, folder: str, name: str, choices: list[str] | None = None) -> str:
    """Full path of the file `name` that the input `input_name` picked from ComfyUI's `folder` list, looked up
    in the folders registered for it only. A name that is not there, or that is a path (absolute, or with a
    '..' part), is `node`'s error naming the input, the name, the folders searched and the fix; it is never
    opened (ComfyUI itself would quietly look '../x' up as 'x')."""
    path = folder_paths.get_full_path(folder, name) if _inside(name) else None
    if path is None:
        raise missing(node, input_name, folder, name, safetensors_files(folder) if choices is None else choices)
    return path


def missing(node, input_name: str, folder: str, name: str, choices: list[str]) -> NodeError:
    searched = ", ".join(folder_paths.get_folder_paths(folder)) or "no folder is registered"
    what = f"is not in the {folder} folders" if _inside(name.removesuffix("/")) else \
        f"is a path, not a name in the {folder} folders (nothing outside them is opened)"
    shown = ", ".join(choices[:SHOWN]) + (f" ({len(choices) - SHOWN} more)" if len(choices) > SHOWN else "")
    pick = f", or pick one from the list: {shown}" if choices else "; the list is empty for now"
    return node_error(node, f"{input_name}: {name!r} {what} (searched: {searched}). Fix: put "
                            f"{os.path.basename(name.rstrip('/')) or 'the file'} into one of those folders "
                            f"(models/{folder}/) and press R in ComfyUI to refresh the list{pick}")


def _inside(name: str) -> bool:
    """A name relative to its folder that stays inside it: not empty, not absolute, no '.' or '..' part."""
    parts = name.replace("\\", "/").split("/")
    return bool(name) and not os.path.isabs(name) and not os.path.splitdrive(name)[0] and \
        all(part not in ("", ".", "..") for part in parts)


def face_analyzer(node, input_name: str, pack: str, provider: str, **options):
    """The InsightFace analyzer of the pack picked in `input_name`; a pack that is missing, zipped or nested is
    `node`'s error naming that input, the pack, the folder and the fix (emma_core.face.check_pack's words)."""
    try:
        return cached_analyzer(insightface_root(), pack, provider, **options)
    except FaceError as error:
        raise node_error(node, f"{input_name}: {error}") from error
